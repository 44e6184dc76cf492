"""Downloads (resume, checksums), safe extraction, and archive / local datasets through the real rules, all
against files the tests make and serve on 127.0.0.1 (issue 5)."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import dependencies, jobs, tiny_config

from peftstudy.data import fetch, layout, synthetic
from peftstudy.data.fetch import FetchError, download, extract
from peftstudy.io import read_json, validate
from peftstudy.plan import stage_specs


class Server:
    """Serves `files` (name -> bytes) with HTTP Range support; `cut` makes the next response stop early."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut: int | None = None  # bytes to send before dropping the connection, once
        self.ranges = True
        self.range_start: int | None = None  # a 206 from this offset whatever was asked (a broken server)
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
                    start = start if server.range_start is None else server.range_start
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


def test_an_unpinned_download_fails_with_its_sum_and_the_line_to_pin_and_is_not_fetched_again(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    dest = tmp_path / "w.bin"
    with pytest.raises(FetchError) as err:
        download(server.url("w.bin"), dest, None, config_key="archives.w")
    message = str(err.value)
    assert f"archives.w.sha256: {sha(PAYLOAD)}" in message and "allow_unpinned: true" in message
    assert not dest.exists()
    asked = len(server.requests)
    assert download(server.url("w.bin"), dest, sha(PAYLOAD)) == sha(PAYLOAD)  # pinned now: the kept download
    assert server.requests[asked]["Range"] == f"bytes={len(PAYLOAD)}-"  # answered 416: nothing sent again
    assert dest.read_bytes() == PAYLOAD


def test_an_unpinned_download_is_accepted_only_when_allowed(server, tmp_path):
    server.files["w.bin"] = PAYLOAD
    assert download(server.url("w.bin"), tmp_path / "w.bin", None, allow_unpinned=True) == sha(PAYLOAD)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


@pytest.mark.parametrize("server_kind", ["ignores Range", "answers another range"])
def test_a_resumed_download_is_never_spliced(server, tmp_path, server_kind):
    """Unpinned (no sum to catch it): a 200 to a ranged request, or a 206 from elsewhere than asked, restarts."""
    server.files["w.bin"] = PAYLOAD
    server.cut = 1 << 20
    dest = tmp_path / "w.bin"
    with pytest.raises(FetchError, match="run again to resume"):
        download(server.url("w.bin"), dest, None, allow_unpinned=True)
    if server_kind == "ignores Range":
        server.ranges = False
    else:
        server.range_start = 0
    assert download(server.url("w.bin"), dest, None, allow_unpinned=True) == sha(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD


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


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_a_truncated_archive_is_named_and_removed_so_a_rerun_fetches_it_afresh(tmp_path, kind):
    payload = {"a.txt": os.urandom(100_000), "b.txt": os.urandom(100_000)}
    archive = tmp_path / f"t.{kind}"
    whole = tar_bytes(payload) if kind == "tar.gz" else zip_bytes(payload)
    archive.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FetchError) as err:
        extract(archive, tmp_path / "out")
    assert f"{archive}: truncated or corrupt" in str(err.value) and "removed: run again" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_archive_of_dot_slash_members_extracts(tmp_path):
    """`tar -C dir .` makes members `./`, `./a.txt`: common, and `./` has no parts."""
    (tmp_path / "made/sub").mkdir(parents=True)
    (tmp_path / "made/sub/a.txt").write_text("a")
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "made", arcname=".")
    with tarfile.open(archive) as tf:
        assert tf.getnames()[0] == "."
    extract(archive, tmp_path / "out")
    assert (tmp_path / "out/sub/a.txt").read_text() == "a"


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_an_archive_unpacking_to_more_than_its_limit_is_refused_before_writing(tmp_path):
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_bytes({f"{i}.bin": bytes(1 << 20) for i in range(4)}))  # 4 MiB of zeros in ~4 KB
    assert bomb.stat().st_size < 20_000
    with pytest.raises(FetchError) as err:
        extract(bomb, tmp_path / "out", max_bytes=1 << 20, config_key="archives.bomb")
    message = str(err.value)
    assert "unpacks to 4.2 MB" in message and "limit of 1.0 MB" in message and "free on" in message
    assert "raise archives.bomb.max_unpacked_gb" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]
    extract(bomb, tmp_path / "out", max_bytes=8 << 20)  # under the limit: unpacked
    assert (tmp_path / "out/3.bin").stat().st_size == 1 << 20


def test_an_archive_larger_than_the_free_space_is_refused_before_writing(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_bytes({"a.bin": bytes(1 << 20)}))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(fetch.shutil, "disk_usage", lambda path: usage._replace(free=100_000))
    with pytest.raises(FetchError) as err:
        extract(archive, tmp_path / "out")
    message = str(err.value)
    assert "unpacks to 1.0 MB" in message and f"0.1 MB free on {tmp_path}" in message and "limit" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


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
    assert {rule for rule, _ in plan} == {"fetch", "extract", "source_local", "prepare"}
    workflow.snakemake(*targets, "--configfile", str(path))
    root = workflow.root / "results/tiny/data"
    manifest = read_json(root / "count/manifest.json", schema="manifest")
    assert manifest["source"] == "archive" and manifest["spec"]["sha256"] == sha(archive)
    assert read_json(root / "digits/manifest.json", schema="manifest")["source"] == "local"
    # Each dataset's source/ (what prepare reads) links the folder's entries where they lie: nothing copied.
    linked = root / "count/source/test.txt"
    assert linked.is_symlink() and linked.resolve() == (workflow.root / "resources/data/vtab_1k/vtab-1k/count/test.txt")
    assert (root / "digits/source/images").resolve() == tmp_path / "made/count/images"
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


def test_unpinned_data_and_weights_are_refused_unless_allowed_and_then_in_every_results_provenance(server, tmp_path):
    """The stages the rules run: `fetch` and `fetch-backbone` refuse an unpinned download unless
    --allow-unpinned, and then the manifest and the weights carry it into provenance.record."""
    import torch

    from peftstudy import provenance
    from peftstudy.cli import main
    from peftstudy.models import create_backbone

    archive = processed_vtab_tar(tmp_path / "made")
    weights = io.BytesIO()
    torch.save(create_backbone("peftstudy_vit_test", 5).state_dict(), weights)
    server.files.update({"vtab-1k.tar.gz": archive, "weights.pth": weights.getvalue()})
    res = tmp_path / "resources"
    fetch_archive = ["fetch", "--url", server.url("vtab-1k.tar.gz"), "--sha256", "none"]
    fetch_archive += [
        "--config-key",
        "archives.vtab_1k",
        "--out",
        f"{res}/vtab_1k",
        "--out-checksum",
        f"{res}/v.sha256",
    ]
    fetch_weights = ["fetch-backbone", "--url", server.url("weights.pth"), "--sha256", "none", "--format", "torch"]
    fetch_weights += [
        "--arch",
        "peftstudy_vit_test",
        "--config-key",
        "backbone.source",
        "--out",
        f"{res}/w.safetensors",
    ]
    with pytest.raises(FetchError, match=f"archives.vtab_1k.sha256: {sha(archive)}"):
        main(fetch_archive)
    with pytest.raises(FetchError, match=f"backbone.source.sha256: {sha(weights.getvalue())}"):
        main(fetch_weights)
    assert not (res / "vtab_1k").exists() and not (res / "w.safetensors").exists()

    main([*fetch_archive, "--allow-unpinned"])
    main([*fetch_weights, "--allow-unpinned"])
    main(["extract", "--archive", f"{res}/vtab_1k", "--out", f"{res}/data"])
    about = {"source": "archive", "archive": "vtab_1k", "url": "u", "folder": "vtab-1k/count"}
    index = stage_specs.IndexSpec(
        dataset="count",
        folder=f"{res}/data/vtab-1k/count",
        classes=6,
        about=about,
        origin=f"{res}/data",
        checksum=f"{res}/v.sha256",
        source=f"{res}/source",
        manifest=f"{res}/manifest.json",
    ).to_json()
    main(["run", index])
    assert read_json(res / "manifest.json", schema="manifest")["spec"]["unpinned"] is True
    record = provenance.record(
        dependencies=dependencies(),
        data_manifest=res / "manifest.json",
        backbone_weights=res / "w.safetensors",
    )
    assert record["unpinned"] == [
        f"data count: archive from u, sha256 {sha(archive)}",
        f"backbone {res / 'w.safetensors'}: from {server.url('weights.pth')}, sha256 {sha(weights.getvalue())}",
    ]
    validate(record, "provenance")

    # Pinned, the same files leave nothing in the provenance.
    main([*fetch_archive[:4], sha(archive), *fetch_archive[5:]])
    main(["run", index])
    main([*fetch_weights[:4], sha(weights.getvalue()), *fetch_weights[5:]])
    record = provenance.record(
        dependencies=dependencies(),
        data_manifest=res / "manifest.json",
        backbone_weights=res / "w.safetensors",
    )
    assert record["unpinned"] == []
    validate(record, "provenance")


@pytest.mark.slow
def test_the_rules_refuse_an_unpinned_archive_unless_allowed_and_bound_what_it_unpacks(workflow, server, tmp_path):
    archive = processed_vtab_tar(tmp_path / "made")
    server.files["vtab-1k.tar.gz"] = archive
    config = tiny_config()
    config["archives"] = {"vtab_1k": {"url": server.url("vtab-1k.tar.gz"), "sha256": None, "max_unpacked_gb": 1e-6}}
    config["datasets"]["count"] = {"source": "archive", "archive": "vtab_1k", "folder": "vtab-1k/count", "classes": 6}
    target = "results/tiny/data/count/manifest.json"
    assert workflow.snakemake(target, "--configfile", str(workflow.config(config)), check=False).returncode != 0
    log = (workflow.root / "resources/archives/vtab_1k.log").read_text()
    assert f"archives.vtab_1k.sha256: {sha(archive)}" in log and "allow_unpinned: true" in log

    config["allow_unpinned"] = True
    assert workflow.snakemake(target, "--configfile", str(workflow.config(config)), check=False).returncode != 0
    log = (workflow.root / "resources/data/vtab_1k.log").read_text()
    assert "limit of 0.0 MB (archives.vtab_1k.max_unpacked_gb in the config)" in log

    config["archives"]["vtab_1k"]["max_unpacked_gb"] = 1
    workflow.snakemake(target, "--configfile", str(workflow.config(config)))
    spec = read_json(workflow.root / target, schema="manifest")["spec"]
    assert spec["sha256"] == sha(archive) and spec["unpinned"] is True


def test_weights_with_no_sum_no_source_and_no_pretraining_are_refused(workflow):
    config = tiny_config()
    config["backbone"] = dict(config["backbone"], sha256=None)
    proc = workflow.snakemake("-n", "--configfile", str(workflow.config(config)), check=False)
    assert proc.returncode != 0
    assert "backbone.sha256 is null, but backbone has no source" in proc.stdout + proc.stderr
    assert f"sha256sum {config['backbone']['weights']}" in proc.stdout + proc.stderr


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
