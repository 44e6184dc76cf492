"""Downloads (resume, checksums), safe extraction, and archive / local datasets through the real rules, all
against files the tests make and serve on 127.0.0.1 (issue 5)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import jobs, tiny_config

from peftstudy.data import layout, synthetic
from peftstudy.data.fetch import FetchError, download, extract
from peftstudy.io import read_json


class Server:
    """Serves `files` (name -> bytes) with HTTP Range support; `cut` makes the next response stop early."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: int | None = None  # bytes to send before dropping the connection, once
        self.ranges = True
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(dict(self.headers))
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and server.ranges:
                    start = int(rng.removeprefix("bytes=").rstrip("-"))
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut is not None:
                    body, server.cut = body[: server.cut], None
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


PAYLOAD = os.urandom(3 << 20)


def test_a_download_is_verified_and_appears_only_when_complete(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    dest = tmp_path / "w.bin"
    assert download(server.url("w.bin"), dest, sha(PAYLOAD)) == sha(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "w.bin.part").exists()


def test_an_interrupted_download_resumes_where_it_stopped(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    server.cut = 1 << 20
    dest = tmp_path / "w.bin"
    with pytest.raises(FetchError, match="run again to resume"):
        download(server.url("w.bin"), dest, sha(PAYLOAD))
    assert not dest.exists() and (tmp_path / "w.bin.part").stat().st_size == 1 << 20
    download(server.url("w.bin"), dest, sha(PAYLOAD))
    assert server.requests[-1]["Range"] == f"bytes={1 << 20}-"
    assert dest.read_bytes() == PAYLOAD


def test_a_server_that_cannot_resume_restarts_the_download(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    server.ranges = False
    (tmp_path / "w.bin.part").write_bytes(b"stale bytes from another file")
    download(server.url("w.bin"), tmp_path / "w.bin", sha(PAYLOAD))
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def test_a_corrupt_download_names_the_file_both_sums_and_the_fix(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    wrong = "0" * 64
    with pytest.raises(FetchError) as err:
        download(server.url("w.bin"), tmp_path / "w.bin", wrong)
    message = str(err.value)
    assert "w.bin" in message and wrong in message and sha(PAYLOAD) in message and "run again" in message
    assert list(tmp_path.iterdir()) == []


def test_a_missing_url_or_local_file_says_so(server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404"):
        download(server.url("absent"), tmp_path / "x", None)
    with pytest.raises(FetchError, match="no such file"):
        download(str(tmp_path / "absent"), tmp_path / "x", None)


def tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "links", "message"),
    [
        ({"ok.txt": b"1", "../evil.txt": b"2"}, None, "'../evil.txt' would be written outside"),
        ({"/etc/evil.txt": b"2"}, None, "'/etc/evil.txt' would be written outside"),
        ({"ok.txt": b"1"}, {"link": "/etc/passwd"}, "'link' is a link"),
    ],
)
def test_unsafe_archive_members_are_refused_and_nothing_is_left(tmp_path, members, links, message):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes(members, links))
    with pytest.raises(FetchError, match=message):
        extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_zip_traversal_is_refused_and_a_good_zip_extracts(tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("../x.txt", "x")
    with pytest.raises(FetchError, match="outside"):
        extract(bad, tmp_path / "out")
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("d/x.txt", "x")
    extract(good, tmp_path / "out")
    assert (tmp_path / "out/d/x.txt").read_text() == "x"


def test_a_truncated_archive_is_an_error_naming_it(tmp_path):
    archive = tmp_path / "t.tar.gz"
    archive.write_bytes(tar_bytes({"a.txt": os.urandom(100_000)})[:500])
    with pytest.raises((FetchError, tarfile.TarError, EOFError)):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def processed_vtab_tar(root: Path) -> bytes:
    """A `vtab-1k.tar.gz` in the processed layout (vtab-1k/<task>/images + four lists), JPEG as the real one."""
    spec = {"task": "count", "classes": 6, "train": 32, "val": 16, "test": 24, "image_size": 32}
    synthetic.generate("count", spec, 0, str(root / "count"), str(root / "count.json"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        tf.add(root / "count", arcname="vtab-1k/count")
    return buffer.getvalue()


@pytest.mark.slow
def test_archive_and_local_datasets_are_fetched_indexed_and_prepared_by_the_rules(workflow, server, tmp_path):
    archive = processed_vtab_tar(tmp_path / "made")
    server.files["vtab-1k.tar.gz"] = archive
    config = tiny_config()
    config["archives"] = {"vtab_1k": {"url": server.url("vtab-1k.tar.gz"), "sha256": sha(archive)}}
    config["datasets"]["count"] = {"source": "archive", "archive": "vtab_1k", "folder": "vtab-1k/count", "classes": 6}
    config["datasets"]["digits"] = {"source": "local", "path": str(tmp_path / "made/count"), "classes": 6}
    path = workflow.config(config)
    targets = [f"results/tiny/data/{d}/{s}.npz" for d in ("count", "digits") for s in ("train", "test")]
    plan = jobs(workflow.snakemake(*targets, "-n", "--configfile", str(path)).stdout)
    assert {rule for rule, _ in plan} == {"fetch", "extract", "index", "prepare"}
    workflow.snakemake(*targets, "--configfile", str(path))
    root = workflow.root / "results/tiny/data"
    manifest = read_json(root / "count/manifest.json", schema="manifest")
    assert manifest["source"] == "archive" and manifest["spec"]["sha256"] == sha(archive)
    assert read_json(root / "digits/manifest.json", schema="manifest")["source"] == "local"
    a, b = (np.load(root / f"{d}/test.npz") for d in ("count", "digits"))
    assert np.array_equal(a["images"], b["images"]) and len(a["labels"]) == 24
    # A second run fetches nothing.
    assert jobs(workflow.snakemake(*targets, "--configfile", str(path)).stdout) == []


@pytest.mark.slow
def test_a_corrupt_archive_fails_its_fetch_job_with_the_sums(workflow, server, tmp_path):
    archive = processed_vtab_tar(tmp_path / "made")
    server.files["vtab-1k.tar.gz"] = archive[:-100]  # truncated on the server
    config = tiny_config()
    config["archives"] = {"vtab_1k": {"url": server.url("vtab-1k.tar.gz"), "sha256": sha(archive)}}
    config["datasets"]["count"] = {"source": "archive", "archive": "vtab_1k", "folder": "vtab-1k/count", "classes": 6}
    path = workflow.config(config)
    proc = workflow.snakemake("results/tiny/data/count/train.npz", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    log = (workflow.root / "resources/archives/vtab_1k.log").read_text()
    assert sha(archive) in log and sha(archive[:-100]) in log
    assert not (workflow.root / "resources/archives/vtab_1k").exists()


def test_index_refuses_labels_outside_the_classes(tmp_path):
    synthetic.generate(
        "count",
        {"task": "count", "classes": 6, "train": 8, "val": 4, "test": 4, "image_size": 16},
        0,
        str(tmp_path / "src"),
        str(tmp_path / "m.json"),
    )
    with pytest.raises(
        ValueError, match=r"train800.txt: labels \[[3-5, ]+\] outside 0\.\.2; check datasets\.count\.classes"
    ):
        layout.index(tmp_path / "src", "count", 3, {"source": "local"}, tmp_path / "manifest.json")
    with pytest.raises(FileNotFoundError, match="not in the processed-VTAB layout"):
        layout.index(tmp_path, "count", 6, {"source": "local"}, tmp_path / "manifest.json")


def google_npz(model) -> dict[str, np.ndarray]:
    """A timm ViT's weights in the original Google ViT `.npz` layout (the inverse of timm's loader)."""
    s = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = s["cls_token"].shape[-1]
    heads = model.blocks[0].attn.num_heads
    out = {
        "embedding/kernel": s["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": s["patch_embed.proj.bias"],
        "cls": s["cls_token"],
        "Transformer/posembed_input/pos_embedding": s["pos_embed"],
        "Transformer/encoder_norm/scale": s["norm.weight"],
        "Transformer/encoder_norm/bias": s["norm.bias"],
        "pre_logits/kernel": np.zeros((dim, dim), np.float32),  # in the original files; timm drops it
    }
    for i in range(len(model.blocks)):
        b, p = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        out[f"{p}LayerNorm_0/scale"], out[f"{p}LayerNorm_0/bias"] = s[b + "norm1.weight"], s[b + "norm1.bias"]
        out[f"{p}LayerNorm_2/scale"], out[f"{p}LayerNorm_2/bias"] = s[b + "norm2.weight"], s[b + "norm2.bias"]
        qkv_w, qkv_b = np.split(s[b + "attn.qkv.weight"], 3), np.split(s[b + "attn.qkv.bias"], 3)
        for name, w, bias in zip(("query", "key", "value"), qkv_w, qkv_b, strict=True):
            out[f"{p}MultiHeadDotProductAttention_1/{name}/kernel"] = w.T.reshape(dim, heads, -1)
            out[f"{p}MultiHeadDotProductAttention_1/{name}/bias"] = bias.reshape(heads, -1)
        out[f"{p}MultiHeadDotProductAttention_1/out/kernel"] = (
            s[b + "attn.proj.weight"].reshape(dim, heads, -1).transpose(1, 2, 0)
        )
        out[f"{p}MultiHeadDotProductAttention_1/out/bias"] = s[b + "attn.proj.bias"]
        for r in range(2):
            out[f"{p}MlpBlock_3/Dense_{r}/kernel"] = s[b + f"mlp.fc{r + 1}.weight"].T
            out[f"{p}MlpBlock_3/Dense_{r}/bias"] = s[b + f"mlp.fc{r + 1}.bias"]
    return out


@pytest.mark.parametrize("fmt", ["npz", "torch"])
def test_backbone_weights_are_fetched_converted_and_load_strictly(workflow, server, tmp_path, fmt):
    import torch

    from peftstudy.models import create_backbone

    torch.manual_seed(0)
    original = create_backbone("peftstudy_vit_test", 5)
    buffer = io.BytesIO()
    if fmt == "npz":
        np.savez(buffer, **google_npz(original))
    else:
        torch.save({"state_dict": original.state_dict()}, buffer)
    server.files["weights"] = buffer.getvalue()
    config = tiny_config()
    config["backbone"] = {
        "arch": "peftstudy_vit_test",
        "image_size": 16,
        "weights": "resources/backbones/test.safetensors",
        "sha256": None,
        "pretrain": False,
        "source": {"url": server.url("weights"), "sha256": sha(buffer.getvalue()), "format": fmt},
    }
    path = workflow.config(config)
    workflow.snakemake("resources/backbones/test.safetensors", "--configfile", str(path))
    loaded = create_backbone("peftstudy_vit_test", 5, weights=workflow.root / "resources/backbones/test.safetensors")
    for name, tensor in original.state_dict().items():
        if not name.startswith("head."):
            assert torch.allclose(loaded.state_dict()[name], tensor, atol=1e-6), name


def test_a_checkpoint_with_foreign_keys_is_refused(tmp_path):
    import torch

    from peftstudy.models import convert, create_backbone

    state = create_backbone("peftstudy_vit_test", 5).state_dict()
    torch.save(dict(state, extra_adapter=torch.zeros(3)), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"unexpected \['extra_adapter'\]"):
        convert("peftstudy_vit_test", tmp_path / "w.pth", "torch")
    np.savez(tmp_path / "w.npz", **{"embedding/kernel": np.zeros((4, 4, 3, 32), np.float32)})
    with pytest.raises(ValueError, match=r"w\.npz: no .*embedding/bias.* for peftstudy_vit_test"):
        convert("peftstudy_vit_test", tmp_path / "w.npz", "npz")
