"""The workspace's routes through the real app on both databases: registration against the
storage limit (201, then 200 for the same content, 402 past the limit), folder moves that
would make a cycle (422), recursive deletes, the job cache, and the scopes."""

from __future__ import annotations

import hashlib

import httpx

from saascore.kit.db import Database
from saascore.metering.service import UsageService
from tests.http import tenant


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_documents_folders_and_jobs(api: httpx.AsyncClient, scratch: Database) -> None:
    owner = await tenant(api, scratch)
    await UsageService(scratch).set_limit(owner.organization_id, "storage_bytes", 1_000)
    headers = owner.headers
    top = await api.post("/v1/folders", json={"name": "Top"}, headers=headers)
    assert top.status_code == 201, top.text
    sub = await api.post(
        "/v1/folders", json={"name": "Sub", "parent_id": top.json()["id"]}, headers=headers
    )
    assert sub.json()["path"] == "/Top/Sub"
    cycle = await api.patch(
        f"/v1/folders/{top.json()['id']}", json={"parent_id": sub.json()["id"]}, headers=headers
    )
    assert (cycle.status_code, cycle.json()["error"]["code"]) == (422, "folder_cycle")

    body = {"filename": "a.pdf", "size_bytes": 600, "file_hash": sha("a")}
    body["folder_id"] = sub.json()["id"]
    first = await api.post("/v1/documents", json=body, headers=headers)
    again = await api.post("/v1/documents", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    over = await api.post(
        "/v1/documents",
        json={"filename": "b.pdf", "size_bytes": 401, "file_hash": sha("b")},
        headers=headers,
    )
    assert (over.status_code, over.json()["error"]["code"]) == (402, "limit_exceeded")

    job = {"document_id": first.json()["id"], "job_type": "parse", "options": {"ocr": True}}
    queued = await api.post("/v1/jobs", json=job, headers=headers)
    assert queued.status_code == 201, queued.text
    done = await api.post(
        f"/v1/jobs/{queued.json()['id']}/succeed",
        json={"result": {"pages": 2}, "input_tokens": 10, "output_tokens": 3},
        headers=headers,
    )
    assert done.json()["status"] == "succeeded"
    hit = await api.post("/v1/jobs", json=job, headers=headers)
    assert (hit.status_code, hit.json()["cache_hit"], hit.json()["id"]) == (
        200,
        True,
        queued.json()["id"],
    )

    not_empty = await api.delete(f"/v1/folders/{top.json()['id']}", headers=headers)
    assert (not_empty.status_code, not_empty.json()["error"]["code"]) == (409, "folder_not_empty")
    deleted = await api.delete(f"/v1/folders/{top.json()['id']}?recursive=true", headers=headers)
    assert deleted.json() == {"folders": 2, "documents": 1, "freed_bytes": 600}
    page = await api.get("/v1/documents", headers=headers)
    assert page.json() == {"items": [], "next_cursor": None}


async def test_a_read_only_key_may_read_but_not_write(
    api: httpx.AsyncClient, scratch: Database
) -> None:
    reader = await tenant(api, scratch, scopes=["workspace:read"])
    assert (await api.get("/v1/folders", headers=reader.key_headers)).status_code == 200
    refused = await api.post("/v1/folders", json={"name": "x"}, headers=reader.key_headers)
    assert refused.status_code == 403


async def test_a_rename_onto_a_sibling_s_name_is_409_and_changes_nothing(
    api: httpx.AsyncClient, scratch: Database
) -> None:
    owner = await tenant(api, scratch)
    headers = owner.headers
    top = (await api.post("/v1/folders", json={"name": "Top"}, headers=headers)).json()
    await api.post("/v1/folders", json={"name": "Other"}, headers=headers)
    taken = await api.patch(f"/v1/folders/{top['id']}", json={"name": "Other"}, headers=headers)
    assert (taken.status_code, taken.json()["error"]["code"]) == (409, "folder_name_taken")
    unchanged = await api.get(f"/v1/folders/{top['id']}", headers=headers)
    assert (unchanged.json()["name"], unchanged.json()["path"]) == ("Top", "/Top")


async def test_names_that_differ_only_in_unicode_encoding_are_the_same_name(
    api: httpx.AsyncClient, scratch: Database
) -> None:
    owner = await tenant(api, scratch)
    headers = owner.headers
    composed = await api.post("/v1/folders", json={"name": "Caf\u00e9"}, headers=headers)
    assert composed.status_code == 201, composed.text
    decomposed = {"name": "Cafe\u0301"}
    twin = await api.post("/v1/folders", json=decomposed, headers=headers)
    assert (twin.status_code, twin.json()["error"]["code"]) == (409, "folder_name_taken")
    other = (await api.post("/v1/folders", json={"name": "Other"}, headers=headers)).json()
    renamed = await api.patch(f"/v1/folders/{other['id']}", json=decomposed, headers=headers)
    assert (renamed.status_code, renamed.json()["error"]["code"]) == (409, "folder_name_taken")
    below = await api.post(
        "/v1/folders", json={**decomposed, "parent_id": other["id"]}, headers=headers
    )
    assert below.json()["name"] == "Caf\u00e9"


async def test_a_blank_job_type_is_refused_as_a_blank_folder_name_is(
    api: httpx.AsyncClient, scratch: Database
) -> None:
    owner = await tenant(api, scratch)
    headers = owner.headers
    folder = await api.post("/v1/folders", json={"name": " "}, headers=headers)
    assert (folder.status_code, folder.json()["error"]["code"]) == (422, "invalid_input")
    document = await api.post(
        "/v1/documents",
        json={"filename": "a.pdf", "size_bytes": 1, "file_hash": sha("a")},
        headers=headers,
    )
    for field, value in (("job_type", " "), ("job_type", "\u3000 "), ("model", "  ")):
        job = {"document_id": document.json()["id"], "job_type": "parse", field: value}
        refused = await api.post("/v1/jobs", json=job, headers=headers)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert (error["code"], error["details"]["field"]) == ("invalid_input", field)
    jobs = await api.get("/v1/jobs", headers=headers)
    assert jobs.json()["items"] == []


async def test_names_with_invisible_format_characters_are_refused(
    api: httpx.AsyncClient, scratch: Database
) -> None:
    owner = await tenant(api, scratch)
    headers = owner.headers
    top = await api.post("/v1/folders", json={"name": "Top"}, headers=headers)
    assert top.status_code == 201, top.text
    for invisible in ("\u200b", "\ufeff", "\u200c", "\u200d", "\u2060"):
        for name in (f"{invisible}Top", f"T{invisible}op", f"Top{invisible}"):
            created = await api.post("/v1/folders", json={"name": name}, headers=headers)
            assert created.status_code == 422, (name, created.text)
            error = created.json()["error"]
            assert (error["code"], error["details"]["field"]) == ("invalid_character", "name")
            assert f"U+{ord(invisible):04X}" in error["message"]
        renamed = await api.patch(
            f"/v1/folders/{top.json()['id']}", json={"name": f"{invisible}Top"}, headers=headers
        )
        assert (renamed.status_code, renamed.json()["error"]["code"]) == (
            422,
            "invalid_character",
        )
    listed = await api.get("/v1/folders", headers=headers)
    assert [folder["name"] for folder in listed.json()["items"]] == ["Top"]


async def test_integers_are_taken_only_as_json_integers(
    api: httpx.AsyncClient, scratch: Database
) -> None:
    owner = await tenant(api, scratch)
    headers = owner.headers
    for size in ("10", True, 10.0, "1e1"):
        body = {"filename": "a.pdf", "size_bytes": size, "file_hash": sha("a")}
        refused = await api.post("/v1/documents", json=body, headers=headers)
        assert refused.status_code == 422, (size, refused.text)
        assert refused.json()["error"]["code"] == "validation_error"
    assert (await api.get("/v1/documents", headers=headers)).json()["items"] == []
    document = await api.post(
        "/v1/documents",
        json={"filename": "a.pdf", "size_bytes": 10, "file_hash": sha("a")},
        headers=headers,
    )
    assert document.status_code == 201, document.text
    job = await api.post(
        "/v1/jobs",
        json={"document_id": document.json()["id"], "job_type": "parse"},
        headers=headers,
    )
    generation = {
        "document_id": document.json()["id"],
        "generation_type": "summary",
        "content": {"text": "t"},
    }
    for field in ("input_tokens", "output_tokens"):
        for count in ("5", True, 5.0):
            done = await api.post(
                f"/v1/jobs/{job.json()['id']}/succeed",
                json={"result": {}, field: count},
                headers=headers,
            )
            assert done.status_code == 422, (field, count, done.text)
            generated = await api.post(
                "/v1/generations", json={**generation, field: count}, headers=headers
            )
            assert generated.status_code == 422, (field, count, generated.text)
    still = await api.get(f"/v1/jobs/{job.json()['id']}", headers=headers)
    assert (still.json()["status"], still.json()["input_tokens"]) == ("queued", 0)
    assert (await api.get("/v1/generations", headers=headers)).json()["items"] == []
