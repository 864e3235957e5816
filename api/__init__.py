"""The admin API (a later issue): definitions in SQL published to Kafka, execution control,
the Redis read model, roles and tenant isolation. Nothing here yet."""
