"""The Label Studio round trip against a real Label Studio server (slow; skipped without one).

Label Studio's SDK needs Pillow >= 12.3, which fights ``constraints.txt`` (Pillow 11.3.0), so
it is not an extra of this package: install it in a virtual environment of its own and point
``MISICAL_LABEL_STUDIO`` at its ``label-studio`` executable (else ``label-studio`` on PATH is
used). The test talks to the server over HTTP on 127.0.0.1 only:

1. ``misical select --format labelstudio`` exports picks of a tiny store's unlabelled pool;
2. a server starts (free port, temporary data folder), a project gets
   :func:`~misical_gym.annotations.labelstudio.labelling_config`, and the export is imported;
3. every task gets an annotation through the API: a brush mask per class of the image's
   held-back truth, encoded by Label Studio's own brush encoder (its SDK, run in its venv);
4. the project is exported in Label Studio's JSON, read back by ``misical label --format
   labelstudio --picks``, and the picked patches' counts must equal the truth's.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from misical_gym.annotations.labelstudio import BRUSH, IMAGE, labelling_config
from misical_gym.cli import main
from misical_gym.store import FeatureStore
from tests.test_pool_cli import pool_data, prepared, truth  # noqa: F401

pytestmark = pytest.mark.slow
START_TIMEOUT = 300  # s: the first start migrates a fresh database
REQUEST_TIMEOUT = 60  # s


def label_studio() -> Path:
    found = os.environ.get("MISICAL_LABEL_STUDIO") or shutil.which("label-studio")
    if not found or not Path(found).is_file():
        pytest.skip("Label Studio is not installed (set MISICAL_LABEL_STUDIO)")
    return Path(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A Label Studio server on 127.0.0.1, stopped on exit; ``call`` is its JSON API."""

    def __init__(self, executable: Path, data_dir: Path) -> None:
        self.port, self.token = free_port(), secrets.token_hex(20)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "HOME": str(data_dir),
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "COLLECT_ANALYTICS": "false",
        }
        argv = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--data-dir", str(data_dir / "ls")]
        argv += ["--username", "misical@example.com", "--password", secrets.token_hex(8)]
        argv += ["--user-token", self.token, "--enable-legacy-api-token"]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = (data_dir / "server.log").open("wb")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"Label Studio exited with {self.process.returncode}")
            try:
                self.call("GET", "/api/projects/")
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(2)
        raise AssertionError(f"Label Studio did not answer within {START_TIMEOUT} s")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
            return json.loads(response.read() or b"null")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        self.log.close()


def brush_rle(executable: Path, masks: list[np.ndarray]) -> list[list[int]]:
    """Label Studio's own brush RLE of each boolean mask, from its SDK in its environment."""
    script = (
        "import json, sys, numpy as np\n"
        "from label_studio_sdk.converter.brush import mask2rle\n"
        "masks = json.load(sys.stdin)\n"
        "print(json.dumps([mask2rle(np.array(m, dtype=np.uint8) * 255) for m in masks]))\n"
    )
    python = executable.parent / "python"
    result = subprocess.run(
        [str(python), "-c", script],
        input=json.dumps([m.astype(int).tolist() for m in masks]),
        capture_output=True,
        text=True,
        timeout=REQUEST_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return [[int(v) for v in rle] for rle in json.loads(result.stdout)]


def test_picks_round_trip_through_a_label_studio_server(prepared, pool_data, tmp_path):  # noqa: F811
    executable = label_studio()
    store_path = shutil.copytree(prepared, tmp_path / "store")
    select = ["select", "--store", str(store_path), "--policy", "presence", "--target", "car"]
    select += ["--budget", "10", "--mode", "rank"]
    assert main([*select, "--format", "labelstudio", "--out", str(tmp_path / "tasks.json")]) == 0
    assert main([*select, "--out", str(tmp_path / "picks.json")]) == 0
    exported = json.loads((tmp_path / "tasks.json").read_text())
    store = FeatureStore.open(store_path)
    server = Server(executable, tmp_path / "ls")
    try:
        server.wait()
        project = server.call(
            "POST",
            "/api/projects/",
            {"title": "misical round trip", "label_config": labelling_config(store.class_names)},
        )
        server.call("POST", f"/api/projects/{project['id']}/import", exported)
        listed = server.call("GET", f"/api/tasks/?project={project['id']}&page_size=1000")
        tasks = listed["tasks"] if isinstance(listed, dict) else listed
        assert len(tasks) == len(exported)
        for task in tasks:
            # The pre-drawn patches came in as the task's prediction, one rectangle per pick.
            (prediction,) = server.call("GET", f"/api/tasks/{task['id']}/")["predictions"]
            boxes = [r["value"] for r in prediction["result"]]
            assert len(boxes) == len(task["data"]["patches"]) and all(
                b["rectanglelabels"] == ["patch"] for b in boxes
            )
            image = task["data"]["image_id"]
            label = truth(pool_data, image)
            classes = [int(c) for c in np.unique(label)]
            rles = brush_rle(executable, [label == c for c in classes])
            height, width = label.shape
            result = [
                {
                    "id": f"c{c}",
                    "type": "brushlabels",
                    "from_name": BRUSH,
                    "to_name": IMAGE,
                    "original_width": width,
                    "original_height": height,
                    "image_rotation": 0,
                    "value": {"format": "rle", "rle": rle, "brushlabels": [store.class_names[c]]},
                }
                for c, rle in zip(classes, rles, strict=True)
            ]
            server.call("POST", f"/api/tasks/{task['id']}/annotations/", {"result": result})
        export = server.call(
            "GET", f"/api/projects/{project['id']}/export?exportType=JSON&download_all_tasks=true"
        )
    finally:
        server.stop()
    (tmp_path / "export.json").write_text(json.dumps(export))
    assert len(export) == len(exported) and all(t["annotations"] for t in export)
    argv = ["label", str(store_path), "--annotations", str(tmp_path / "export.json")]
    argv += ["--format", "labelstudio", "--picks", str(tmp_path / "picks.json")]
    assert main(argv) == 0
    after = FeatureStore.open(store_path)
    picks = json.loads((tmp_path / "picks.json").read_text())["picks"]
    ids = np.array([p["patch_id"] for p in picks])
    assert after.labelled[ids].all() and ids.size == 10
    for patch, (y0, x0, y1, x1) in zip(ids, after.boxes(ids), strict=True):
        label = truth(pool_data, after.image_ids[int(after.patches[patch, 0])])[y0:y1, x0:x1]
        expect = np.bincount(label.ravel(), minlength=after.num_classes)
        np.testing.assert_array_equal(np.asarray(after.counts)[patch], expect)
