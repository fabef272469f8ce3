"""Schemathesis against the reference server's own OpenAPI schema.

Every operation of ``/openapi.json`` is fuzzed with positive and negative cases (valid and
invalid inputs for its declared parameters and bodies). Each request must pass schemathesis's
``not_a_server_error``, ``status_code_conformance``, ``content_type_conformance`` and
``response_schema_conformance`` checks: no 5xx, only declared statuses, and answers that match
the declared models.

Random strings rarely name anything that exists, so the cases are steered: before each
operation a fresh *playground* dataset (folders, three images, a pending upload with a signed
URL) is made, and each case may swap its dataset, path, id, filename and token values for the
playground's. Each case is sent with one of three keys: the owner's, a viewer's of the same
organization, or an owner's of another organization; on top of schemathesis's checks:

- a viewer never gets a 2xx from a route that changes something;
- another organization's 2xx answers never name an id of ours it was not sent;
- a *victim* dataset, whose names and ids only the viewer and the other organization are
  steered at, is exactly as it was when the run ends.

CI runs ``EXAMPLES`` cases per operation and mode, derandomized (same cases every run);
``PICTOFS_LONG=1`` runs ``LONG_EXAMPLES`` random ones.
"""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pictofs.server import run

LONG = os.environ.get("PICTOFS_LONG") == "1"
EXAMPLES = 12
LONG_EXAMPLES = 400
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
WRITE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# Operations whose success needs a coincidence of several generated values (register: the
# name, folder, type and size of the one pending upload); they may end a run without a 2xx.
NO_SUCCESS_NEEDED = {"POST /api/v1/developer/images/register"}


@dataclass
class Playground:
    """One dataset with folders ``/a``, ``/a/b``, ``/empty/sub``, images ``x.png``,
    ``a/y.png``, ``a/b/z.png`` and a PUT-but-unregistered ``p.png``."""

    name: str
    id: str
    image_ids: list[str]
    token: str
    img_paths: tuple[str, ...] = ("x.png", "a/y.png", "a/b/z.png")
    dir_paths: tuple[str, ...] = ("a", "a/b", "empty", "empty/sub")


def make_playground(api: Any, make_png: Any, prefix: str) -> Playground:
    dataset = api.create_dataset(prefix)
    name = dataset["name"]
    ids = [api.upload(name, "x.png", make_png(f"{name}x"))["id"],
           api.upload(name, "y.png", make_png(f"{name}y"), "/a")["id"],
           api.upload(name, "z.png", make_png(f"{name}z"), "/a/b")["id"]]
    assert api.post("/directories/", json={"dataset": name,
                                           "directory_path": "/empty/sub"}).status_code == 201
    url = api.upload_url(name, "p.png").json()["data"]["upload_url"]
    assert api.put(url, make_png(f"{name}p")).status_code == 200
    # A second URL for the same name, left unused: the storage PUT cases may use it.
    url = api.upload_url(name, "p.png").json()["data"]["upload_url"]
    return Playground(name, dataset["id"], ids, url.rsplit("/", 1)[1])


def snapshot(api: Any, dataset: dict[str, Any]) -> dict[str, Any]:
    """Everything a write could change in a dataset: images (archived too), annotations,
    folders and the dataset itself."""
    name = dataset["name"]
    images = api.get("/images/", params={"dataset": name, "include_archived": "true",
                                         "limit": 1000}).json()["data"]
    notes = {}
    for img in images:
        if not img["is_archived"]:
            path = (img["directory_path"].strip("/") + "/").lstrip("/") + img["filename"]
            notes[img["id"]] = api.get(f"/annotations/{name}/{path}").json()
    ds = api.get(f"/datasets/{name}").json()["data"]
    folders = api.get(f"/directories/{name}").json()
    return {"images": images, "annotations": notes, "dataset": ds, "folders": folders}


@dataclass
class Tally:
    """Statuses per operation, and the failures seen (the first of each kind)."""

    statuses: dict[str, collections.Counter[int]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter))
    failures: list[str] = field(default_factory=list)
    cases: int = 0

    def fail(self, label: str, message: str) -> None:
        first_line = message.strip().splitlines()[0] if message.strip() else message
        if not any(f.startswith(f"{label}: {first_line}") for f in self.failures):
            self.failures.append(f"{label}: {message.strip()[:3000]}")


def _steer(value: Any, choices: list[Any], data: st.DataObject) -> Any:
    """The generated value or one of ``choices`` (the first choices are the likelier)."""
    pick = data.draw(st.integers(0, len(choices)))
    return value if pick == len(choices) else choices[pick]


def test_fuzz_every_operation(ref_server, api, make_api, make_png):
    started = time.monotonic()
    viewer_key = run.create_key(ref_server.data_dir, "viewer")
    other_org = f"fuzz-other-{uuid.uuid4().hex[:6]}"
    run.create_org(ref_server.data_dir, other_org)
    other_key = run.create_key(ref_server.data_dir, "owner", other_org)
    keys = {"owner": ref_server.key, "viewer": viewer_key, "other": other_key}

    victim = make_playground(api, make_png, "victim")
    victim_before = snapshot(api, {"name": victim.name})
    ours = set(victim.image_ids) | {victim.id}

    schema = schemathesis.openapi.from_url(ref_server.base_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert len(operations) >= 30, sorted(labels)
    tally = Tally()
    examples = LONG_EXAMPLES if LONG else EXAMPLES

    for op in operations:
        label = f"{op.method.upper()} {op.path}"
        ground = make_playground(api, make_png, "fuzz")
        ours |= set(ground.image_ids) | {ground.id}

        def values(who: str, name: str) -> list[Any]:
            grounds = [ground] if who == "owner" else [victim, ground]
            table: dict[str, list[Any]] = collections.defaultdict(list)
            for g in grounds:
                table["dataset"] += [g.name, g.id]
                table["img_path"] += list(g.img_paths)
                table["dir_path"] += list(g.dir_paths)
                table["image_id"] += g.image_ids
                table["token"] += [g.token]
                table["directory_path"] += ["/a", "/a/b", "/"]
            table["dataset_name"] = table["dataset"]
            table["target_directory_path"] = ["/a", "/new", "/"]
            table["filename"] = ["p.png", "new.jpg", "x.png", "y.heic"]
            table["content_type"] = ["image/png", "image/jpeg"]
            table["new_name"] = ["renamed", "b"]
            return table.get(name, [])

        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=examples, deadline=None, database=None,
                      derandomize=not LONG, suppress_health_check=list(HealthCheck),
                      phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
            @given(case=op.as_strategy(generation_mode=mode), data=st.data())
            def fuzz(case: Any, data: st.DataObject) -> None:
                who = data.draw(st.sampled_from(["owner", "owner", "viewer", "other"]))
                for name in list(case.path_parameters or {}):
                    case.path_parameters[name] = _steer(case.path_parameters[name],
                                                        values(who, name), data)
                if isinstance(case.query, dict) and "dataset" in case.query:
                    case.query["dataset"] = _steer(case.query["dataset"],
                                                   values(who, "dataset"), data)
                body = case.body if isinstance(case.body, dict) else {}
                items = body.get("images") if isinstance(body.get("images"), list) else []
                for target in [body, *[i for i in items if isinstance(i, dict)]]:
                    for name in list(target):
                        choices = values(who, name)
                        if choices:
                            target[name] = _steer(target[name], choices, data)
                if isinstance(body.get("image_ids"), list) and data.draw(st.booleans()):
                    body["image_ids"] = data.draw(st.lists(
                        st.sampled_from(values(who, "image_id")), max_size=3))
                if op.path.startswith("/storage/") and case.path_parameters.get("token") in (
                        victim.token, ground.token):
                    case.media_type = data.draw(st.sampled_from(["image/png", "image/jpeg"]))

                sent = f"{case.path_parameters} {case.query} {json.dumps(case.body, default=str)}"
                tally.cases += 1
                try:
                    response = case.call_and_validate(headers={"X-API-Key": keys[who]},
                                                      checks=CHECKS, timeout=30)
                except BaseException as exc:  # noqa: B036 - FailureGroup is a BaseExceptionGroup
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    tally.fail(label, f"[{who} key] {exc}\n"
                                      f"{case.as_curl_command(headers={'X-API-Key': who})}")
                    return
                tally.statuses[label][response.status_code] += 1
                ok = 200 <= response.status_code < 300
                if ok and who == "viewer" and case.method.upper() in WRITE_METHODS \
                        and not op.path.startswith("/storage/"):
                    tally.fail(label, f"a viewer key got {response.status_code} for {sent}")
                if ok and who == "other":
                    leaked = {i for i in ours if i in response.text and i not in sent}
                    if leaked:
                        tally.fail(label, f"another organization saw {sorted(leaked)} in "
                                          f"{response.text[:500]} (sent {sent})")

            try:
                fuzz()
            except hypothesis.errors.Unsatisfiable:
                # Nothing to negate (no parameters, or only free-form strings): the positive
                # mode covered the operation.
                assert mode is GenerationMode.NEGATIVE, label

    victim_after = snapshot(api, {"name": victim.name})
    elapsed = time.monotonic() - started
    counts = {label: dict(sorted(c.items())) for label, c in sorted(tally.statuses.items())}
    print(f"\nfuzz: {len(operations)} operations, {tally.cases} cases in {elapsed:.1f}s")
    for label, statuses in counts.items():
        print(f"  {label}: {statuses}")
    assert not tally.failures, "\n\n".join(tally.failures)
    assert victim_after == victim_before, "the victim dataset changed"
    # Steering works: every operation reached its success path at least once.
    never_ok = sorted(label for label in labels - NO_SUCCESS_NEEDED
                      if not any(200 <= s < 300 for s in tally.statuses[label]))
    assert not never_ok, f"never answered 2xx: {never_ok}\n{counts}"
    # ...and its refusals: every keyed operation refused a bad key or a bad input.
    never_refused = sorted(label for label in labels - {"GET /healthz", "GET /metrics"}
                           if not any(400 <= s < 500 for s in tally.statuses[label]))
    assert not never_refused, f"never answered 4xx: {never_refused}\n{counts}"
    assert "Traceback" not in ref_server.log_text()


def test_fuzz_found_bugs_stay_fixed(api, dataset, make_png, check_error):
    """The inputs the fuzzer found answering 500 (or stored, then failing every later
    answer): now refused with 422 and nothing stored."""
    name = dataset["name"]
    api.upload(name, "x.png", make_png("fixed"))
    huge = "1" + "0" * 30
    deep = "[" * 80 + "]" * 80
    for method, path, text in (
        ("POST", "/datasets/", '{"name": "s1", "description": "\\ud800"}'),
        ("POST", "/datasets/", '{"name": "s2", "classes": [{"name": "\\udfff"}]}'),
        ("POST", "/images/bulk-tag",
         '{"dataset": "%s", "image_ids": [], "tags": ["\\ud83d"]}' % name),
        ("POST", f"/annotations/{name}/x.png", '{"annotations": [{"confidence": NaN}]}'),
        ("POST", f"/annotations/{name}/x.png", '{"annotations": [{"confidence": 1e999}]}'),
        ("POST", f"/annotations/{name}/x.png",
         '{"annotations": [{"confidence": %s}]}' % huge),
        ("POST", f"/annotations/{name}/x.png", '{"annotations": [{"p": %s}]}' % deep),
        ("POST", "/images/register",
         '{"dataset": "%s", "filename": "w.png", "content_type": "image/png", "width": %s,'
         ' "height": 1}' % (name, huge)),
    ):
        response = api.request(method, path, data=text.encode(),
                               headers={"Content-Type": "application/json"})
        check_error(response, 422, "validation_error")
    for params in ({"offset": 2**63}, {"offset": 10**30}):
        check_error(api.get("/images/", params={"dataset": name, **params}), 422)
        check_error(api.get("/datasets/", params=params), 422)
        check_error(api.get(f"/datasets/{name}", params={"include_images": "true",
                                                          "images_offset": params["offset"]}),
                    422)
    assert api.get("/images/", params={"dataset": name, "offset": 2**63 - 1}).json()["data"] == []
    # Nothing above was stored: every listing still renders, the image has no annotations.
    assert api.get("/datasets/", params={"limit": 1000}).status_code == 200
    assert api.get(f"/annotations/{name}/x.png").json() == {"annotations": []}
    # Answers the schema did not declare are declared now.
    folder = {"dataset": name, "directory_path": "/again"}
    assert api.post("/directories/", json=folder).status_code == 201
    assert api.post("/directories/", json=folder).status_code == 200
    schema = requests.get(api.server.base_url + "/openapi.json", timeout=10).json()
    assert "200" in schema["paths"]["/api/v1/developer/directories/"]["post"]["responses"]
    put = schema["paths"]["/storage/upload/{token}"]["put"]
    assert "411" in put["responses"] and "image/*" in put["requestBody"]["content"]
