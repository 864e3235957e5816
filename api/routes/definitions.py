"""Workflows, keywords and campaign definitions (one router each, made by
:func:`definition_router`) and the account policy: create, list the live versions, show,
every version, update (a new version), delete (a new version with ``active: false``:
running executions finish on their version). A body may nest at most
:data:`api.schemas.MAX_DEPTH` levels. Every write goes through :func:`api.projection.write`
(409 when another publisher's body took the version)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path

from api import projection, store
from api.auth import EDIT, READ, Allow, Principal
from api.db import DefinitionVersion
from api.deps import ServicesDep, SessionDep
from api.errors import Problem
from api.schemas import DefinitionCursor, DefinitionOut, DefinitionPage, Limit, check_depth

__all__ = ["definition_router", "policy_router"]

Reader = Annotated[Principal, Depends(Allow(READ))]
Editor = Annotated[Principal, Depends(Allow(EDIT))]
DefId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]
DefinitionBody = Annotated[dict[str, Any], Body(
    description="the definition (docs/workflows.md, docs/campaigns.md); account, kind, id "
                "and version are taken from the URL and the store")]


def out(row: DefinitionVersion) -> DefinitionOut:
    return DefinitionOut(kind=row.kind, account=row.account, id=row.def_id,
                         version=row.version, created_at=row.created_at,
                         created_by=row.created_by, definition=row.body)


def definition_router(kind: str, plural: str) -> APIRouter:
    router = APIRouter(prefix=f"/v1/accounts/{{account}}/{plural}", tags=[plural])

    @router.post("", status_code=201, response_model=DefinitionOut,
                 summary=f"Create a {kind} (version 1)")
    async def create(account: str, body: DefinitionBody, who: Editor, session: SessionDep,
                     svc: ServicesDep) -> DefinitionOut:
        """Validate with the workers' own validator and store it with its outbox record."""
        check_depth(body)
        def_id = body.get("id")
        if not isinstance(def_id, str):
            raise Problem(422, "the definition needs an id", type_="invalid-definition",
                          errors=[{"loc": ["body", "id"], "msg": "Field required"}])
        row = await projection.write(svc, session, account=account, kind=kind,
                                     def_id=def_id, body=body, create=True, actor=who.key_id)
        return out(row)

    @router.get("", response_model=DefinitionPage, summary=f"List {plural} (live versions)")
    async def list_(account: str, who: Reader, session: SessionDep, limit: Limit = 50,
                    cursor: DefinitionCursor = None) -> DefinitionPage:
        """The live version of each, by id."""
        rows, after = await store.list_live(session, account=account, kind=kind,
                                            after=cursor, limit=limit)
        return DefinitionPage(items=[out(r) for r in rows], next_cursor=after)

    @router.get("/{def_id}", response_model=DefinitionOut, summary=f"Show a {kind}")
    async def show(account: str, def_id: DefId, who: Reader, session: SessionDep
                   ) -> DefinitionOut:
        """The live version."""
        row = await store.live(session, account=account, kind=kind, def_id=def_id)
        if row is None:
            raise Problem(404, f"no {kind} {def_id!r}")
        return out(row)

    @router.get("/{def_id}/versions", response_model=list[DefinitionOut],
                summary=f"Every version of a {kind}")
    async def versions(account: str, def_id: DefId, who: Reader, session: SessionDep
                       ) -> list[DefinitionOut]:
        """Oldest first."""
        rows = await store.history(session, account=account, kind=kind, def_id=def_id)
        if not rows:
            raise Problem(404, f"no {kind} {def_id!r}")
        return [out(r) for r in rows]

    @router.get("/{def_id}/versions/{version}", response_model=DefinitionOut,
                summary=f"One version of a {kind}")
    async def version(account: str, def_id: DefId, version: Version, who: Reader,
                      session: SessionDep) -> DefinitionOut:
        """As published (versions are write-once)."""
        for row in await store.history(session, account=account, kind=kind, def_id=def_id):
            if row.version == version:
                return out(row)
        raise Problem(404, f"no {kind} {def_id!r} v{version}")

    @router.put("/{def_id}", response_model=DefinitionOut,
                summary=f"Update a {kind} (a new version)")
    async def update(account: str, def_id: DefId, body: DefinitionBody, who: Editor,
                     session: SessionDep, svc: ServicesDep) -> DefinitionOut:
        """The body is the whole new version; a ``version`` in it must be the next one."""
        check_depth(body)
        row = await projection.write(svc, session, account=account, kind=kind,
                                     def_id=def_id, body=body, create=False, actor=who.key_id)
        return out(row)

    @router.delete("/{def_id}", response_model=DefinitionOut,
                   summary=f"Deactivate a {kind} (a new version, active false)")
    async def delete(account: str, def_id: DefId, who: Editor, session: SessionDep,
                     svc: ServicesDep) -> DefinitionOut:
        """Nothing new starts from it; what runs finishes on its own version."""
        current = await store.live(session, account=account, kind=kind, def_id=def_id)
        if current is None:
            raise Problem(404, f"no {kind} {def_id!r}")
        body = {k: v for k, v in current.body.items() if k != "version"}
        row = await projection.write(svc, session, account=account, kind=kind,
                                     def_id=def_id, body={**body, "active": False},
                                     create=False, actor=who.key_id)
        return out(row)

    return router


def policy_router() -> APIRouter:
    router = APIRouter(prefix="/v1/accounts/{account}/policy", tags=["policy"])

    @router.get("", summary="The account policy (caps, quiet hours, keywords, inactivity)")
    async def show(account: str, who: Reader, session: SessionDep) -> dict[str, Any]:
        """The live version, or the defaults the workers apply without one (version 0)."""
        row = await store.live(session, account=account, kind="account",
                               def_id=store.POLICY_ID)
        if row is None:
            return {"version": 0, "definition": await store.policy(session, account)}
        return out(row).model_dump(mode="json")

    @router.get("/versions", response_model=list[DefinitionOut],
                summary="Every version of the account policy")
    async def versions(account: str, who: Reader, session: SessionDep) -> list[DefinitionOut]:
        rows = await store.history(session, account=account, kind="account",
                                   def_id=store.POLICY_ID)
        return [out(r) for r in rows]

    @router.put("", response_model=DefinitionOut, summary="Set the account policy")
    async def update(account: str, body: DefinitionBody, who: Editor, session: SessionDep,
                     svc: ServicesDep) -> DefinitionOut:
        """A new version; fields left out take the defaults."""
        check_depth(body)
        row = await projection.write(svc, session, account=account, kind="account",
                                     def_id=store.POLICY_ID, body=body, create=False,
                                     actor=who.key_id)
        svc.policies.pop(account, None)
        return out(row)

    return router
