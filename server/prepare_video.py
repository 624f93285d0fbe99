"""`netllm prepare-video`: encode a synthetic source into a 6-level MPEG-DASH ladder plus `video.json`.

One ffmpeg process renders a lavfi test pattern (moving content plus temporal noise, so that the picture is
expensive to code and every extra kbps buys visible quality), splits it into one scaled copy per rung and
encodes each with x264 in constant-bitrate mode: `-b:v = -minrate = -maxrate`, a VBV buffer of
`vbv_buffer_s` seconds and `nal-hrd=cbr`, which makes x264 pad with filler data, so that every segment is
close to `bitrate x duration / 8` bytes. GOPs are fixed at exactly one segment (keyint = min-keyint, no
scene-cut keyframes), so ffmpeg's DASH muxer cuts every representation at the same instants.

The segments come from ffmpeg's DASH muxer; the manifest is rewritten by `server.mpd.write_mpd` (static,
one shared numbered SegmentTemplate, representation ids `0..5` in ladder order, i.e. the id is the level).
`video.json` (read by `netllm.video.load_video`) records the real byte size of every media segment file.

Output is built in a sibling staging folder and moved into place only when complete, so an existing
`video.json` always means a complete video; re-running with the same settings keeps it (`--force` re-encodes).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from netllm.cli import CommandError
from netllm.config import arg, save_config, to_jsonable
from netllm.paths import default_video_dir
from netllm.video import CHUNK_DURATION_S, PENSIEVE_LADDER_KBPS, load_video
from server.mpd import Manifest, MpdError, Representation, fill_template, parse_mpd, write_mpd

MPD_NAME = "manifest.mpd"
INIT_TEMPLATE = "init-$RepresentationID$.mp4"
MEDIA_TEMPLATE = "chunk-$RepresentationID$-$Number$.m4s"
_FFMPEG_MPD = "ffmpeg.mpd"
DEFAULT_RESOLUTIONS = ["320x180", "640x360", "768x432", "1024x576", "1280x720", "1920x1080"]


@dataclass
class Config:
    out: Path = arg(default_video_dir(), help="folder to write the MPD, segments and video.json into")
    chunks: int = arg(48, help="number of segments (chunks) per representation")
    chunk_duration_s: float = arg(CHUNK_DURATION_S, help="segment duration in seconds (= GOP length)")
    ladder_kbps: list[int] = arg(list(PENSIEVE_LADDER_KBPS), help="bitrate ladder, ascending, kbps")
    resolutions: list[str] = arg(list(DEFAULT_RESOLUTIONS), help="WxH per ladder rung, same order")
    fps: int = arg(24, help="frame rate; fps x chunk duration must be a whole number of frames")
    pattern: str = arg("mosaic", help="source: 'mosaic' (4 busy synthetic tiles) or one lavfi video source "
                                      "name (testsrc2, smptehdbars, mandelbrot, ...)")
    noise: int = arg(8, help="temporal noise strength 0-100 on the test pattern (0 = none)")
    preset: str = arg("ultrafast", help="x264 speed preset (ultrafast: 48 chunks in about 2 min on 2 cores)")
    vbv_buffer_s: float = arg(0.25, help="x264 VBV buffer in seconds of the rung's bitrate; smaller = "
                                         "segment sizes closer to nominal, coarser keyframes")
    ffmpeg: str = arg("ffmpeg", help="ffmpeg executable")
    force: bool = arg(False, help="re-encode even if a complete video with the same settings exists")


# --- settings and validation ---------------------------------------------------------------------------

def _settings(cfg: Config) -> dict:
    """What determines the output; a kept video must match it exactly."""
    skip = {"out", "force", "ffmpeg"}
    return {k: v for k, v in to_jsonable(cfg).items() if k not in skip}


def _parse_resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise CommandError(f"--resolutions: {text!r} is not WIDTHxHEIGHT") from None
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise CommandError(f"--resolutions: {text!r} must be positive and even (4:2:0 chroma)")
    return width, height


H264_PROFILES = {0x42: "baseline", 0x4D: "main", 0x58: "extended", 0x64: "high"}


def h264_profile(codecs: str) -> str:
    """The H.264 profile an `avc1.PPCCLL` codecs string names (PP: profile_idc, CC: constraint flags); what
    the encoder produced, which the preset can make lower than asked (ultrafast has no CABAC: baseline)."""
    if not codecs.startswith(("avc1.", "avc3.")):
        return "unknown"
    try:
        profile_idc, constraints = int(codecs[5:7], 16), int(codecs[7:9], 16)
    except ValueError:
        return "unknown"
    name = H264_PROFILES.get(profile_idc, f"profile_idc {profile_idc}")
    return f"constrained {name}" if profile_idc == 0x42 and constraints & 0x40 else name


def _gop_frames(cfg: Config) -> int:
    frames = cfg.fps * cfg.chunk_duration_s
    if cfg.fps <= 0 or cfg.chunk_duration_s <= 0 or abs(frames - round(frames)) > 1e-9:
        raise CommandError(f"--fps {cfg.fps} x --chunk-duration-s {cfg.chunk_duration_s} must be a whole "
                           "positive number of frames (segments are cut at fixed keyframes)")
    duration_ms = cfg.chunk_duration_s * 1000
    if abs(duration_ms - round(duration_ms)) > 1e-6:  # the MPD states segment durations in milliseconds
        raise CommandError(f"--chunk-duration-s {cfg.chunk_duration_s} must be a whole number of milliseconds")
    return int(round(frames))


def _validate(cfg: Config) -> list[tuple[int, int]]:
    if cfg.chunks < 1:
        raise CommandError(f"--chunks must be at least 1, got {cfg.chunks}")
    ladder = cfg.ladder_kbps
    if not ladder or any(b <= a for a, b in zip(ladder, ladder[1:])) or ladder[0] <= 0:
        raise CommandError(f"--ladder-kbps must be positive and strictly ascending, got {ladder}")
    if len(cfg.resolutions) != len(ladder):
        raise CommandError(f"--resolutions has {len(cfg.resolutions)} entries for {len(ladder)} ladder rungs")
    if not 0 <= cfg.noise <= 100:
        raise CommandError(f"--noise must be within 0-100, got {cfg.noise}")
    if cfg.vbv_buffer_s <= 0:
        raise CommandError(f"--vbv-buffer-s must be positive, got {cfg.vbv_buffer_s}")
    _gop_frames(cfg)
    return [_parse_resolution(r) for r in cfg.resolutions]


# --- the ffmpeg run -------------------------------------------------------------------------------------

def _mosaic(cfg: Config, width: int, height: int) -> str:
    """2x2 tiles that stay busy for any duration: test pattern + noise, a slow Mandelbrot zoom, a
    scrolling rule-30 automaton, a Sierpinski carpet. The last three render at half size (cheap) and are
    scaled up; only the test pattern gets noise, which keeps its flat bars from being free to code."""
    tile_w, tile_h = width // 2, height // 2
    half = f"s={max(2, tile_w // 2)}x{max(2, tile_h // 2)}:r={cfg.fps}"
    up, sharp = f"scale={tile_w}x{tile_h}", f"scale={tile_w}x{tile_h}:flags=neighbor"
    noise = f",noise=alls={cfg.noise}:allf=t" if cfg.noise else ""
    return (f"testsrc2=s={tile_w}x{tile_h}:r={cfg.fps}{noise}[a];"
            # end_pts stretches the zoom so that the view is still on the set's boundary after minutes
            f"mandelbrot={half}:maxiter=1024:end_pts=1000,{up}[b];"
            f"cellauto={half}:rule=30:scroll=1:random_fill_ratio=0.5,{sharp}[c];"
            f"sierpinski={half}:type=carpet,{sharp}[d];"
            f"[a][b][c][d]xstack=inputs=4:layout=0_0|w0_0|0_h0|w0_h0,scale={width}x{height}")


def source_filter(cfg: Config, width: int, height: int) -> str:
    """The lavfi graph of the synthetic source at the top rung's size."""
    if cfg.pattern == "mosaic":
        graph = _mosaic(cfg, width, height)
    else:
        graph = f"{cfg.pattern}=size={width}x{height}:rate={cfg.fps}"
        if cfg.noise:
            graph += f",noise=alls={cfg.noise}:allf=t"  # fresh noise every frame: nothing to predict
    return graph + ",format=yuv420p"


def ffmpeg_command(cfg: Config, sizes: list[tuple[int, int]], mpd_path: Path) -> list[str]:
    duration_s = cfg.chunks * cfg.chunk_duration_s
    gop = _gop_frames(cfg)
    top_w, top_h = sizes[-1]
    levels = len(sizes)
    graph = f"[0:v]split={levels}" + "".join(f"[s{i}]" for i in range(levels))
    graph += "".join(f";[s{i}]scale={w}x{h}:flags=bicubic,setsar=1[v{i}]" for i, (w, h) in enumerate(sizes))
    cmd = [cfg.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-nostats", "-progress", "pipe:1",
           "-y", "-f", "lavfi", "-t", f"{duration_s:g}", "-i", source_filter(cfg, top_w, top_h),
           "-filter_complex", graph]
    for i, kbps in enumerate(cfg.ladder_kbps):
        buffer_kbit = max(1, round(kbps * cfg.vbv_buffer_s))
        cmd += ["-map", f"[v{i}]", f"-c:v:{i}", "libx264", f"-b:v:{i}", f"{kbps}k", f"-minrate:v:{i}",
                f"{kbps}k", f"-maxrate:v:{i}", f"{kbps}k", f"-bufsize:v:{i}", f"{buffer_kbit}k"]
    cmd += ["-preset", cfg.preset, "-profile:v", "high", "-pix_fmt", "yuv420p",
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            # fixed closed GOPs = segment boundaries; filler NALs hold the rate up on easy frames
            "-x264-params", "scenecut=0:open-gop=0:nal-hrd=cbr:force-cfr=1",
            "-f", "dash", "-seg_duration", f"{cfg.chunk_duration_s:g}", "-use_template", "1",
            "-use_timeline", "0", "-adaptation_sets", "id=0,streams=v", "-write_prft", "0",
            "-init_seg_name", INIT_TEMPLATE, "-media_seg_name", MEDIA_TEMPLATE, str(mpd_path)]
    return cmd


def _ffmpeg_version(ffmpeg: str) -> str:
    try:
        out = subprocess.run([ffmpeg, "-hide_banner", "-version"], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise CommandError(f"ffmpeg not found ({ffmpeg!r}); install it (Debian: apt-get install ffmpeg) "
                           "or pass --ffmpeg PATH") from None
    except (OSError, subprocess.CalledProcessError) as exc:
        raise CommandError(f"cannot run {ffmpeg!r} -version: {exc}") from None
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def _run_ffmpeg(cmd: list[str], total_s: float) -> None:
    """Run ffmpeg, print progress about every 10 %, raise CommandError with its stderr tail on failure."""
    print(f"prepare-video: encoding {total_s:g} s of video ...", flush=True)
    # stderr goes to a file, not a pipe: an error-spamming ffmpeg must not block while we read stdout
    with tempfile.TemporaryFile("w+") as errors, subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=errors, text=True) as proc:
        reported = 0.0
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # `-progress pipe:1` writes key=value lines
                if line.startswith("out_time_us=") and line[12:].strip().isdigit():
                    done_s = int(line[12:]) / 1e6
                    if done_s - reported >= total_s / 10:
                        reported = done_s
                        print(f"prepare-video: {min(done_s, total_s):.0f}/{total_s:g} s", flush=True)
            proc.wait()
        except BaseException:
            proc.kill()  # our own child: do not leave an encoder running after Ctrl-C
            raise
        errors.seek(0)
        tail = "".join(deque(errors, maxlen=20)).strip() or "(no output)"
    if proc.returncode != 0:
        raise CommandError(f"ffmpeg failed with exit status {proc.returncode}:\n{tail}\ncommand: "
                           + " ".join(cmd))


# --- collecting the output ------------------------------------------------------------------------------

def _collect(cfg: Config, staging: Path, sizes: list[tuple[int, int]]) -> tuple[Manifest, list[list[int]]]:
    """Check ffmpeg's output (one init + `chunks` segments per rung) and measure every segment file."""
    try:
        produced = parse_mpd(staging / _FFMPEG_MPD)
    except MpdError as exc:
        raise CommandError(f"ffmpeg wrote an unexpected manifest: {exc}") from exc
    if len(produced.representations) != len(cfg.ladder_kbps):
        raise CommandError(f"ffmpeg wrote {len(produced.representations)} representations, "
                           f"expected {len(cfg.ladder_kbps)}")
    reps, chunk_sizes = [], []
    for level, (rep, (width, height)) in enumerate(zip(produced.representations, sizes)):
        rep_id = str(level)
        files = [staging / fill_template(MEDIA_TEMPLATE, rep_id, n) for n in range(1, cfg.chunks + 1)]
        init = staging / fill_template(INIT_TEMPLATE, rep_id)
        missing = [f.name for f in [init, *files] if not f.is_file()]
        extra = staging / fill_template(MEDIA_TEMPLATE, rep_id, cfg.chunks + 1)
        if missing or extra.exists():
            raise CommandError(f"level {level}: segment files do not match {cfg.chunks} chunks "
                               f"(missing {missing[:3]}, extra {extra.name if extra.exists() else None})")
        chunk_sizes.append([f.stat().st_size for f in files])
        reps.append(Representation(id=rep_id, bandwidth_bps=cfg.ladder_kbps[level] * 1000, width=width,
                                   height=height, codecs=rep.codecs))
    manifest = Manifest(tuple(reps), cfg.chunk_duration_s, cfg.chunks * cfg.chunk_duration_s,
                        INIT_TEMPLATE, MEDIA_TEMPLATE, start_number=1, frame_rate=str(cfg.fps))
    return manifest, chunk_sizes


def size_deviation(cfg: Config, chunk_sizes: list[list[int]]) -> list[dict]:
    """Per level: how far segment sizes are from nominal bitrate x duration / 8 (relative)."""
    rows = []
    for kbps, sizes in zip(cfg.ladder_kbps, chunk_sizes):
        nominal = kbps * 1000 * cfg.chunk_duration_s / 8
        rel = [s / nominal - 1 for s in sizes]
        rows.append({"bitrate_kbps": kbps, "nominal_bytes": nominal, "mean_bytes": sum(sizes) / len(sizes),
                     "mean_rel_dev": sum(rel) / len(rel), "max_abs_rel_dev": max(abs(r) for r in rel)})
    return rows


def _video_doc(cfg: Config, manifest: Manifest, chunk_sizes: list[list[int]], version: str) -> dict:
    return {
        "name": cfg.out.name, "ladder_kbps": list(cfg.ladder_kbps), "chunk_duration_s": cfg.chunk_duration_s,
        "chunk_count": cfg.chunks, "chunk_sizes_bytes": chunk_sizes, "mpd": MPD_NAME,
        "representations": [r.id for r in manifest.representations],
        "resolutions": list(cfg.resolutions), "codecs": [r.codecs for r in manifest.representations],
        "init_segments": [manifest.init_name(r.id) for r in manifest.representations],
        "segment_template": MEDIA_TEMPLATE, "start_number": manifest.start_number,
        "source": {"generator": "ffmpeg lavfi", "filter": source_filter(cfg, *_parse_resolution(
            cfg.resolutions[-1])), "fps": cfg.fps, "duration_s": cfg.chunks * cfg.chunk_duration_s},
        "encoder": {"ffmpeg": version, "codec": "libx264",
                    "profiles": [h264_profile(r.codecs) for r in manifest.representations], "preset": cfg.preset,
                    "rate_control": "cbr (b=minrate=maxrate, nal-hrd=cbr)", "vbv_buffer_s": cfg.vbv_buffer_s,
                    "gop_frames": _gop_frames(cfg), "scenecut": 0, "container": "fMP4 (ffmpeg dash muxer)"},
        "settings": _settings(cfg),
    }


# --- keeping / replacing the output folder ---------------------------------------------------------------

def _existing_matches(cfg: Config) -> bool:
    """True when `out` holds a complete video made with the same settings; error when it differs."""
    doc_path = cfg.out / "video.json"
    if not doc_path.is_file():
        return False
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"{doc_path}: unreadable ({exc}); pass --force to re-encode") from exc
    if doc.get("settings") != _settings(cfg):
        raise CommandError(f"{cfg.out} holds a video prepared with other settings ({doc.get('settings')}); "
                           "pass --force to replace it or choose another --out")
    names = doc.get("init_segments", []) + [doc.get("mpd", MPD_NAME)]
    for level, rep_id in enumerate(doc.get("representations", [])):
        for n, size in enumerate(doc["chunk_sizes_bytes"][level], start=doc.get("start_number", 1)):
            path = cfg.out / fill_template(doc["segment_template"], rep_id, n)
            if not path.is_file() or path.stat().st_size != size:
                raise CommandError(f"{path}: missing or not the size video.json records; pass --force")
    if any(not (cfg.out / n).is_file() for n in names):
        raise CommandError(f"{cfg.out}: manifest or init segments missing; pass --force to re-encode")
    return True


def _replace_output(staging: Path, out: Path) -> None:
    if out.exists():
        ours = (out / "video.json").is_file() or (out.is_dir() and not any(out.iterdir()))
        if not ours:
            raise CommandError(f"{out} exists and is not a prepared video; refusing to replace it")
        shutil.rmtree(out)
    staging.rename(out)


def run(cfg: Config) -> int:
    cfg.out = Path(cfg.out).expanduser().resolve()
    sizes = _validate(cfg)
    if not cfg.force and _existing_matches(cfg):
        load_video(cfg.out)  # a kept video must still load
        print(f"prepare-video: {cfg.out} is complete with these settings; kept (--force re-encodes)")
        return 0
    version = _ffmpeg_version(cfg.ffmpeg)
    staging = cfg.out.parent / f".{cfg.out.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)  # left by an interrupted run of ours (the name is ours)
    staging.mkdir(parents=True)
    try:
        started = time.monotonic()
        _run_ffmpeg(ffmpeg_command(cfg, sizes, staging / _FFMPEG_MPD), cfg.chunks * cfg.chunk_duration_s)
        encode_s = time.monotonic() - started
        manifest, chunk_sizes = _collect(cfg, staging, sizes)
        write_mpd(staging / MPD_NAME, manifest)
        (staging / _FFMPEG_MPD).unlink()
        doc = _video_doc(cfg, manifest, chunk_sizes, version)
        (staging / "video.json").write_text(json.dumps(doc) + "\n")
        deviation = size_deviation(cfg, chunk_sizes)
        summary = {"out": str(cfg.out), "encode_s": round(encode_s, 2), "chunks": cfg.chunks,
                   "levels": len(cfg.ladder_kbps), "size_deviation": deviation}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        save_config(cfg, staging)
        load_video(staging)  # what we hand over must load
        _replace_output(staging, cfg.out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    worst = max(d["max_abs_rel_dev"] for d in deviation)
    print(f"prepare-video: wrote {cfg.out} ({cfg.chunks} chunks x {len(sizes)} levels) in {encode_s:.1f} s; "
          f"worst segment size deviation from nominal {worst:.1%}", flush=True)
    return 0


if __name__ == "__main__":
    from netllm.cli import main

    sys.exit(main(["prepare-video", *sys.argv[1:]]))
