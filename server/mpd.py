"""Read and write the static MPEG-DASH manifests of prepared videos.

One period, one video adaptation set, one representation per ladder rung, each addressed with a numbered
`SegmentTemplate` (`$RepresentationID$`, `$Number$`) of fixed-duration segments. That is the subset dash.js
plays and the only one `netllm prepare-video` writes; `parse_mpd` also reads ffmpeg's own manifests (same
subset) so that the preparation step can take codec strings from them.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

MPD_NS = "urn:mpeg:dash:schema:mpd:2011"
_NS = {"d": MPD_NS}
MPD_CONTENT_TYPE = "application/dash+xml"


class MpdError(ValueError):
    """A manifest outside the supported subset; the message names the file and the element."""


@dataclass(frozen=True)
class Representation:
    id: str
    bandwidth_bps: int
    width: int
    height: int
    codecs: str
    mime_type: str = "video/mp4"


@dataclass(frozen=True)
class Manifest:
    representations: tuple[Representation, ...]
    segment_duration_s: float
    presentation_duration_s: float
    initialization: str
    """Template of the init segment name, e.g. `init-$RepresentationID$.mp4`."""
    media: str
    """Template of the media segment names, e.g. `chunk-$RepresentationID$-$Number$.m4s`."""
    start_number: int = 1
    frame_rate: str = ""

    @property
    def segment_count(self) -> int:
        # Fixed-duration segments: the last one may be shorter, hence the ceiling (with a float-noise guard).
        return math.ceil(self.presentation_duration_s / self.segment_duration_s - 1e-9)

    def init_name(self, rep_id: str) -> str:
        return fill_template(self.initialization, rep_id)

    def media_name(self, rep_id: str, number: int) -> str:
        return fill_template(self.media, rep_id, number)


_TEMPLATE_VAR = re.compile(r"\$(RepresentationID|Number|Bandwidth|Time)(%0(\d+)d)?\$")


def fill_template(template: str, rep_id: str, number: int | None = None, bandwidth_bps: int = 0) -> str:
    """Expand the DASH identifiers of a segment template (`$$` escapes a dollar)."""

    def value(match: re.Match[str]) -> str:
        name, width = match.group(1), match.group(3)
        if name == "RepresentationID":
            return rep_id
        raw = {"Number": number, "Bandwidth": bandwidth_bps}.get(name)
        if raw is None:
            raise MpdError(f"template {template!r}: ${name}$ needs a value")
        return f"{int(raw):0{int(width or 1)}d}"

    return _TEMPLATE_VAR.sub(value, template).replace("$$", "$")


def parse_iso_duration_s(text: str) -> float:
    """`PT1H2M3.5S` -> seconds (the day/hour/minute/second subset MPDs use)."""
    match = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", text.strip())
    if not match or text.strip() in ("P", "PT"):
        raise MpdError(f"not an ISO 8601 duration: {text!r}")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_iso_duration_s(seconds: float) -> str:
    return f"PT{seconds:.3f}S".replace(".000S", "S")


def _required(elem: ET.Element, attr: str, where: str) -> str:
    value = elem.get(attr)
    if value is None:
        raise MpdError(f"{where}: <{elem.tag.split('}')[-1]}> lacks the {attr!r} attribute")
    return value


def parse_mpd(path: Path) -> Manifest:
    """Read a static single-period SegmentTemplate manifest; `MpdError` names what is unsupported."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise MpdError(f"{path}: cannot read the manifest ({exc})") from exc
    where = str(path)
    if root.tag != f"{{{MPD_NS}}}MPD":
        raise MpdError(f"{where}: root element is {root.tag!r}, expected an MPD in namespace {MPD_NS}")
    if root.get("type", "static") != "static":
        raise MpdError(f"{where}: only static manifests are supported (type={root.get('type')!r})")
    periods = root.findall("d:Period", _NS)
    if len(periods) != 1:
        raise MpdError(f"{where}: expected exactly one Period, found {len(periods)}")
    sets = periods[0].findall("d:AdaptationSet", _NS)
    if len(sets) != 1:
        raise MpdError(f"{where}: expected exactly one AdaptationSet, found {len(sets)}")
    adaptation = sets[0]
    reps, templates = [], []
    for rep in adaptation.findall("d:Representation", _NS):
        mime = rep.get("mimeType") or adaptation.get("mimeType") or "video/mp4"
        reps.append(Representation(
            id=_required(rep, "id", where), bandwidth_bps=int(_required(rep, "bandwidth", where)),
            width=int(rep.get("width", 0)), height=int(rep.get("height", 0)),
            codecs=rep.get("codecs") or adaptation.get("codecs") or "", mime_type=mime))
        tmpl = rep.find("d:SegmentTemplate", _NS)
        templates.append(tmpl if tmpl is not None else adaptation.find("d:SegmentTemplate", _NS))
    if not reps:
        raise MpdError(f"{where}: the AdaptationSet has no Representation")
    if any(t is None for t in templates):
        raise MpdError(f"{where}: every Representation needs a SegmentTemplate")
    tmpl = templates[0]
    keys = ("initialization", "media", "duration", "timescale", "startNumber")
    if any([t.get(k) for k in keys] != [tmpl.get(k) for k in keys] for t in templates):
        raise MpdError(f"{where}: representations must share one segment template (names and duration)")
    if tmpl.find("d:SegmentTimeline", _NS) is not None:
        raise MpdError(f"{where}: SegmentTimeline is not supported, expected fixed-duration segments")
    timescale = int(tmpl.get("timescale", "1"))
    seg_duration_s = int(_required(tmpl, "duration", where)) / timescale
    return Manifest(
        representations=tuple(reps), segment_duration_s=seg_duration_s,
        presentation_duration_s=parse_iso_duration_s(_required(root, "mediaPresentationDuration", where)),
        initialization=_required(tmpl, "initialization", where), media=_required(tmpl, "media", where),
        start_number=int(tmpl.get("startNumber", "1")), frame_rate=adaptation.get("frameRate", ""))


def write_mpd(path: Path, manifest: Manifest) -> Path:
    """Write `manifest` as a static, isoff-live profile MPD with one shared SegmentTemplate."""
    ET.register_namespace("", MPD_NS)
    q = lambda tag: f"{{{MPD_NS}}}{tag}"  # noqa: E731 - qualified tag names, read as a table below
    duration = format_iso_duration_s(manifest.presentation_duration_s)
    root = ET.Element(q("MPD"), {
        "profiles": "urn:mpeg:dash:profile:isoff-live:2011", "type": "static",
        "mediaPresentationDuration": duration,
        "maxSegmentDuration": format_iso_duration_s(manifest.segment_duration_s),
        "minBufferTime": format_iso_duration_s(2 * manifest.segment_duration_s)})
    period = ET.SubElement(root, q("Period"), {"id": "0", "start": "PT0S"})
    top = max(manifest.representations, key=lambda r: r.bandwidth_bps)
    attrs = {"id": "0", "contentType": "video", "mimeType": top.mime_type, "segmentAlignment": "true",
             "startWithSAP": "1", "maxWidth": str(top.width), "maxHeight": str(top.height)}
    if top.width and top.height:
        ratio = math.gcd(top.width, top.height)
        attrs["par"] = f"{top.width // ratio}:{top.height // ratio}"
    if manifest.frame_rate:
        attrs["frameRate"] = manifest.frame_rate
    adaptation = ET.SubElement(period, q("AdaptationSet"), attrs)
    timescale = 1000
    ET.SubElement(adaptation, q("SegmentTemplate"), {
        "timescale": str(timescale), "duration": str(round(manifest.segment_duration_s * timescale)),
        "initialization": manifest.initialization, "media": manifest.media,
        "startNumber": str(manifest.start_number)})
    for rep in manifest.representations:
        ET.SubElement(adaptation, q("Representation"), {
            "id": rep.id, "bandwidth": str(rep.bandwidth_bps), "width": str(rep.width),
            "height": str(rep.height), "codecs": rep.codecs, "sar": "1:1"})
    ET.indent(root, space="  ")
    path = Path(path)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
    return path
