"""Case SIGN: the 512 MiB download of B1 with signing on against the same download without it.

Signing on is what a section with ``trusted_signers`` runs before unpacking (signature_gate.py): the
allowed_signers file read and the SSHSIG verified (cryptography imported on first use), the ratchet
read, the download checked against the manifest's sha256 as it is written instead of S3's checksum,
then signed_by and the serial recorded. Target: at most 1.1x the unsigned download (the sha256 overlaps
the download as the CRC does). Each run is a fresh process; the order of the two alternates.

``python -m benchmarks.signing ENDPOINT BUCKET KEY DEST STATE_DIR [SIGNERS]``: one run, one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import inputs
from benchmarks.bench import Bench, MiB, _interleaved
from benchmarks.harness import Row, median, ratio_row, run_json

KEY = "signed.bin"


async def _download(
    endpoint: str, bucket: str, key: str, dest: str, state_dir: str, *signers: str
) -> dict[str, Any]:
    from benchmarks.probe import peak_rss_mib
    from s3deploy.config import Section
    from s3deploy.source.s3 import Endpoint, S3Pool
    from s3deploy.state.store import StateStore

    ep = Endpoint(endpoint_url=endpoint)
    trusted = Path(signers[0]) if signers else None
    section = Section("Bench", bucket, key, endpoint_url=endpoint, trusted_signers=trusted)
    with StateStore.open(Path(state_dir)) as store:
        async with S3Pool() as pool:
            await pool.client(ep)  # the daemon's client is long open
            dep = store.start(section="Bench", bucket=bucket, key=key, etag=None, version_id=None,
                              identity=None, release_dir=None, log_path=None)  # fmt: skip
            started, cpu_before = time.perf_counter(), _cpu_s()
            rev = await pool.head(ep, bucket, key)
            if trusted is None:
                await pool.download(rev, ep, Path(dest))
            else:
                from s3deploy.signature_gate import SignatureGate

                gate = SignatureGate(section, store, pool, ep)
                verified = await gate.before_download(rev)
                sha256 = await pool.download(rev, ep, Path(dest), expect_sha256=verified.manifest.sha256)
                size = (await asyncio.to_thread(Path(dest).stat)).st_size
                await gate.after_download(dep.id, verified, size=size, sha256=sha256)
            seconds = time.perf_counter() - started
            cpu_s = _cpu_s() - cpu_before
            store.finish(dep.id, "succeeded")
    return {"seconds": seconds, "cpu_s": cpu_s, "peak_rss_mib": peak_rss_mib()}


def _cpu_s() -> float:
    """User + system CPU seconds of this process, threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def signed_download(b: Bench, size: int = 512 * MiB) -> list[Row]:
    from s3deploy.signing import Manifest, sign_manifest

    bucket = b.bucket("bench-sign")
    src = inputs.big_file(b.work / "sign.bin", size)
    key_path = b.work / "sign-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_path)], check=True)
    signers = b.work / "allowed_signers"
    signers.write_text(f"bench {key_path.with_suffix('.pub').read_text()}")
    metadata = sign_manifest(Manifest.for_file(src, bucket, KEY), key_path)
    with open(src, "rb") as f:  # one PUT, as B1: S3 keeps an MD5 ETag and a CRC32 for the unsigned run
        b.client.put_object(Bucket=bucket, Key=KEY, Body=f, Metadata=metadata)
    src.unlink()
    out = b.work / "sign-out"
    out.mkdir()
    rss: dict[str, list[float]] = {"signed": [], "unsigned": []}
    cpu: dict[str, list[float]] = {"signed": [], "unsigned": []}

    def run(tag: str, *extra: str) -> float:
        for old in out.iterdir():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        dest, state = out / f"{tag}-{time.monotonic_ns()}", out / "state"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.signing",
            b.endpoint,
            bucket,
            KEY,
            str(dest),
            str(state),
            *extra,
        ]
        res = run_json(cmd, b.env)
        rss[tag].append(res["peak_rss_mib"])
        cpu[tag].append(res["cpu_s"])
        return float(res["seconds"])

    res = _interleaved(
        b.reps, {"unsigned": lambda: run("unsigned"), "signed": lambda: run("signed", str(signers))}
    )
    shutil.rmtree(out)
    b.client.delete_object(Bucket=bucket, Key=KEY)
    signed_cpu, unsigned_cpu = median(cpu["signed"]), median(cpu["unsigned"])
    note = (
        f"agent CPU {signed_cpu:.2f} s signed, {unsigned_cpu:.2f} s unsigned (SeaweedFS shares the cores); "
        f"peak RSS {max(rss['signed']):.0f} MiB signed, {max(rss['unsigned']):.0f} MiB unsigned; signed = "
        "HEAD + SSHSIG verify (ed25519) + ratchet + download checked against the manifest's sha256 "
        "instead of S3's CRC32"
    )
    return [
        ratio_row(
            f"SIGN download {size // MiB} MiB with trusted_signers, vs without",
            res["signed"],
            res["unsigned"],
            1.1,
            note=note,
        )  # fmt: skip
    ]


CASES = {"SIGN": signed_download}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_download(*sys.argv[1:]))))
