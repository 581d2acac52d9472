"""The memory, conversation, RAG store and LLM chat routes through the real app."""

from __future__ import annotations

import base64

import httpx
import sqlalchemy as sa

from saascore.kit.db import Database
from saascore.models import MemoryEntry, UsageCounter
from tests.http import tenant


class TestMemoryRoutes:
    async def test_put_get_list_delete(self, api: httpx.AsyncClient, scratch: Database) -> None:
        a = await tenant(api, scratch)
        for key in ["user_1", "user%2", "userX", "other"]:
            response = await api.put(
                f"/v1/memory/prefs/{key.replace('%', '%25')}",
                json={"value": {"k": key}, "ttl_seconds": 3600},
                headers=a.headers,
            )
            assert response.status_code == 200, response.text
        got = await api.get("/v1/memory/prefs/user%252", headers=a.headers)
        assert got.json()["value"] == {"k": "user%2"}
        assert got.json()["expires_at"] is not None
        page = await api.get(
            "/v1/memory/prefs", params={"prefix": "user", "limit": 2}, headers=a.headers
        )
        body = page.json()
        assert [e["key"] for e in body["items"]] == ["user%2", "userX"]
        rest = await api.get(
            "/v1/memory/prefs",
            params={"prefix": "user", "cursor": body["next_cursor"]},
            headers=a.headers,
        )
        assert [e["key"] for e in rest.json()["items"]] == ["user_1"]
        underscore = await api.get(
            "/v1/memory/prefs", params={"prefix": "user_"}, headers=a.headers
        )
        assert [e["key"] for e in underscore.json()["items"]] == ["user_1"]
        deleted = await api.delete("/v1/memory/prefs/other", headers=a.headers)
        assert deleted.status_code == 204
        missing = await api.get("/v1/memory/prefs/other", headers=a.headers)
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "memory_entry_not_found"

    async def test_a_forged_cursor_is_422_not_a_database_error(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch)
        await api.put("/v1/memory/prefs/k", json={"value": {}}, headers=a.headers)
        # base64 of NUL characters, and of a key longer than any key can be
        for cursor in ("AAAA", base64.urlsafe_b64encode(b"k" * 256).decode()):
            page = await api.get("/v1/memory/prefs", params={"cursor": cursor}, headers=a.headers)
            assert page.status_code == 422, page.text
            assert page.json()["error"]["code"] == "invalid_cursor"

    async def test_hostile_values_are_refused_and_write_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch)
        deep: object = {}
        for _ in range(200):
            deep = {"x": deep}
        for body in (
            {"value": deep},
            {"value": {"x": "y" * 70_000}},
            {"value": [1]},
            {"value": {}, "ttl_seconds": 0},
            {"value": {}, "ttl_seconds": 1e300},
            {"value": {}, "extra": 1},
        ):
            response = await api.put("/v1/memory/ns/k", json=body, headers=a.headers)
            assert response.status_code == 422, (
                body if len(str(body)) < 200 else "",
                response.text,
            )
        nan = await api.put(
            "/v1/memory/ns/k",
            content=b'{"value": {"x": NaN}}',
            headers={**a.headers, "content-type": "application/json"},
        )
        assert nan.status_code == 422, nan.text
        async with scratch.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(MemoryEntry.organization_id == a.organization_id)
            )
        assert count == 0

    async def test_a_blank_namespace_or_key_is_refused_and_writes_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch)
        for path, field in (
            ("/v1/memory/%20/k", "namespace"),
            ("/v1/memory/ns/%20", "key"),
            ("/v1/memory/ns/%20%E3%80%80", "key"),
        ):
            response = await api.put(path, json={"value": {}}, headers=a.headers)
            assert response.status_code == 422, (path, response.text)
            error = response.json()["error"]
            assert (error["code"], error["details"]["field"]) == ("invalid_memory_entry", field)
        async with scratch.session(readonly=True) as s:
            count = await s.scalar(
                sa.select(sa.func.count()).where(MemoryEntry.organization_id == a.organization_id)
            )
        assert count == 0

    async def test_a_viewer_key_reads_but_does_not_write(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch, scopes=["workspace:read"])
        refused = await api.put("/v1/memory/ns/k", json={"value": {}}, headers=a.key_headers)
        assert refused.status_code == 403
        listed = await api.get("/v1/memory/ns", headers=a.key_headers)
        assert listed.status_code == 200


class TestConversationRoutes:
    async def test_put_list_get_delete(self, api: httpx.AsyncClient, scratch: Database) -> None:
        a = await tenant(api, scratch)
        body = {"session_id": "chat-1", "summary": "first", "key_topics": ["billing"]}
        first = await api.put("/v1/conversations", json=body, headers=a.headers)
        assert first.status_code == 200, first.text
        second = await api.put(
            "/v1/conversations",
            json={**body, "summary": "second", "message_count": 4},
            headers=a.headers,
        )
        assert second.json()["id"] == first.json()["id"]
        assert second.json()["user_id"] == str(a.user_id)
        listed = await api.get("/v1/conversations", headers=a.headers)
        assert [c["summary"] for c in listed.json()["items"]] == ["second"]
        one = await api.get(f"/v1/conversations/{first.json()['id']}", headers=a.headers)
        assert one.json()["message_count"] == 4
        gone = await api.delete(f"/v1/conversations/{first.json()['id']}", headers=a.headers)
        assert gone.status_code == 204

    async def test_a_blank_session_id_is_refused_and_writes_nothing(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch)
        for body in (
            {"session_id": " ", "summary": "s"},
            {"session_id": "\u3000 ", "summary": "s"},
            {"session_id": "chat-1", "summary": "s", "agent": " "},
        ):
            response = await api.put("/v1/conversations", json=body, headers=a.headers)
            assert response.status_code == 422, (body, response.text)
            error = response.json()["error"]
            field = "agent" if "agent" in body else "session_id"
            assert (error["code"], error["details"]["field"]) == ("invalid_conversation", field)
        listed = await api.get("/v1/conversations", headers=a.headers)
        assert listed.json()["items"] == []


class TestRagStoreRoutes:
    async def test_store_and_folders(self, api: httpx.AsyncClient, scratch: Database) -> None:
        a = await tenant(api, scratch)
        assert (await api.get("/v1/rag-store", headers=a.headers)).status_code == 404
        created = await api.post(
            "/v1/rag-store",
            json={"provider": "google", "provider_store_id": "fileSearchStores/x"},
            headers=a.headers,
        )
        assert created.status_code == 201, created.text
        again = await api.post(
            "/v1/rag-store",
            json={"provider": "google", "provider_store_id": "fileSearchStores/y"},
            headers=a.headers,
        )
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "rag_store_exists"
        top = await api.post(
            "/v1/rag-store/folders", json={"folder_name": "Contracts"}, headers=a.headers
        )
        assert top.status_code == 201, top.text
        child = await api.post(
            "/v1/rag-store/folders",
            json={"folder_name": "2025", "parent_id": top.json()["id"]},
            headers=a.headers,
        )
        assert child.status_code == 201
        children = await api.get(
            "/v1/rag-store/folders", params={"parent_id": top.json()["id"]}, headers=a.headers
        )
        assert [f["folder_name"] for f in children.json()["items"]] == ["2025"]
        assert (await api.delete("/v1/rag-store", headers=a.headers)).status_code == 204
        listed = await api.get("/v1/rag-store/folders", headers=a.headers)
        assert listed.json()["items"] == []

    async def test_a_folder_name_with_an_invisible_character_is_refused(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch)
        store = {"provider": "google", "provider_store_id": "fileSearchStores/x"}
        assert (await api.post("/v1/rag-store", json=store, headers=a.headers)).status_code == 201
        top = await api.post(
            "/v1/rag-store/folders", json={"folder_name": "Top"}, headers=a.headers
        )
        assert top.status_code == 201, top.text
        for name in ("\u200bTop", "T\ufeffop", "Top\u200d", "\u2060Top", "To\u200cp"):
            refused = await api.post(
                "/v1/rag-store/folders", json={"folder_name": name}, headers=a.headers
            )
            assert refused.status_code == 422, (name, refused.text)
            error = refused.json()["error"]
            assert (error["code"], error["details"]["field"]) == (
                "invalid_rag_store",
                "folder_name",
            )
        listed = await api.get("/v1/rag-store/folders", headers=a.headers)
        assert [f["folder_name"] for f in listed.json()["items"]] == ["Top"]


class TestChatRoute:
    async def test_chat_through_the_mock_is_metered(
        self, api: httpx.AsyncClient, scratch: Database
    ) -> None:
        a = await tenant(api, scratch, limits={"tokens": (1000, True)})
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
        first = await api.post("/v1/llm/chat", json={**body, "call_id": "c1"}, headers=a.headers)
        assert first.status_code == 200, first.text
        second = await api.post("/v1/llm/chat", json={**body, "call_id": "c2"}, headers=a.headers)
        assert second.json()["content"] == first.json()["content"]  # the mock: deterministic
        replay = await api.post("/v1/llm/chat", json={**body, "call_id": "c1"}, headers=a.headers)
        assert replay.status_code == 409
        assert replay.json()["error"]["code"] == "llm_call_replayed"
        over = await api.post("/v1/llm/chat", json={**body, "max_tokens": 5000}, headers=a.headers)
        assert over.status_code == 402
        assert over.json()["error"]["code"] == "limit_exceeded"
        usage = first.json()["input_tokens"] + first.json()["output_tokens"]
        async with scratch.session(readonly=True) as s:
            used, reserved = (
                await s.execute(
                    sa.select(UsageCounter.used, UsageCounter.reserved).where(
                        UsageCounter.organization_id == a.organization_id,
                        UsageCounter.metric == "tokens",
                    )
                )
            ).one()
        assert (used, reserved) == (2 * usage, 0)
