"""`worldlab verify CLIP`: find the provenance watermark in a recorded clip and check its signed session record.

Exit codes: 0 watermark found and its record's signature valid, 1 no watermark, 2 unreadable clip,
3 watermark found but no record with a valid signature (not in --records, or tampered).
"""

from __future__ import annotations

import json

EXIT_NO_WATERMARK, EXIT_UNVERIFIED = 1, 3


def register(sub) -> None:
    p = sub.add_parser("verify", help="find the session watermark in a recorded clip (>= 3 s) and check its "
                                      "signed session record")
    p.add_argument("clip", help="a video file PyAV can decode (mp4, webm, mkv, ivf, ...)")
    p.add_argument("--records", default=None, metavar="DIR",
                   help="the server's records directory (default: $XDG_CONFIG_HOME/worldlab or ~/.config/worldlab, as `worldlab serve`)")
    p.add_argument("--watermark-key", default=None, metavar="TEXT",
                   help="the server's SessionConfig.watermark_key, if it is not the default")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def iter_lumas(path: str):
    """Each decoded frame's luma plane, (H, W) uint8, one at a time (a long clip is never held in memory);
    ValueError (one line) for an unreadable file."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise ValueError(f"cannot read {path}: no video stream")
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="gray")
    except (av.FFmpegError, OSError) as exc:
        raise ValueError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None


def verify_clip(path: str, records_dir: str | None = None, watermark_key: str | None = None) -> dict:
    """The --json answer for a clip: watermark, the signed record it names and whether the signature holds."""
    from worldlab.security import records
    from worldlab.security.watermark import Watermark

    mark = Watermark() if watermark_key is None else Watermark(watermark_key)
    det = mark.detect(iter_lumas(path))
    if det.frames == 0:
        raise ValueError(f"cannot read {path}: no video frames")
    out = {"found": det.found, "session": None, "watermark_id": det.hex_id, "signature_valid": False,
           "record": None, "bit_confidence": round(det.bit_confidence, 4), "frames": det.frames}
    store = records.RecordStore(records_dir)
    entry = store.find(det.hex_id) if det.found else None
    if entry is not None:
        record, signature = entry
        key = store.public_key()
        out.update(session=record.get("session"), record=record,
                   signature_valid=key is not None and records.verify(record, signature, key))
    out["records"] = str(store.records_path)
    return out


def summary(result: dict) -> str:
    if not result["found"]:
        return (f"no watermark found in {result['frames']} frames (bit confidence {result['bit_confidence']:.3f}); "
                "this clip does not carry a worldlab session id")
    lines = [f"watermark found: id {result['watermark_id']} (bit confidence {result['bit_confidence']:.3f}, "
             f"{result['frames']} frames)"]
    rec = result["record"]
    if rec is None:
        lines.append(f"no session record with this id in {result['records']}")
    else:
        lines.append(f"session {rec['session']}  room {rec['room']}  tenant {rec['tenant'] or '-'}  "
                     f"started {rec['start']}  model sha256 {rec['model_sha256'][:16]}")
        lines.append("signature: valid (Ed25519, the server's key)" if result["signature_valid"]
                     else "signature: INVALID: the record was altered or signed with another key")
    return "\n".join(lines)


def run(args) -> int:
    result = verify_clip(args.clip, args.records, args.watermark_key)
    if args.json:
        keys = ("found", "session", "watermark_id", "signature_valid", "record", "bit_confidence")
        print(json.dumps({k: result[k] for k in keys}))
    else:
        print(summary(result))
    if not result["found"]:
        return EXIT_NO_WATERMARK
    return 0 if result["signature_valid"] else EXIT_UNVERIFIED
