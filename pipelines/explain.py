"""``fsar predict --explain``: one PNG per prediction — the query's frames above those of the support clip it
matched best, with the method's own alignment drawn between them (``FewShotMethod.explain``), and the class
scores beside. A method that aligns nothing (ProtoNet) gets the frames and the scores.

Pictures are for reading a few predictions, not an archive: at most ``explain_limit`` are drawn, in
prediction order, into ``<out>/explain/<n>-<video id>.png``.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import torch

from fsar import storage
from fsar.methods.base import Explanation
from fsar.storage import Location


def _one(encoding: Any, index: int) -> Any:
    """Video ``index`` of an encoding with a leading axis (fields that are None stay None)."""
    return type(encoding)(*(None if f is None else f[index] for f in encoding))


def best_support(predictor: Any, query_features: np.ndarray, support_features: np.ndarray) -> tuple[int, Any, Any]:
    """Of one class's support clips ``(K, T, ...)``, the one closest to the query by the method's pair distance
    (the first when the method has none), and the two encodings the explanation reads."""
    method, device = predictor.method, predictor.device
    with torch.no_grad():
        q = method.encode(torch.as_tensor(query_features[None], device=device).float())
        s = method.encode(torch.as_tensor(support_features, device=device).float())
        best = 0
        if hasattr(method, "pair_distance"):
            dist = method.pair_distance(type(s)(*(None if f is None else f[None] for f in s)),
                                        type(q)(*(None if f is None else f[None] for f in q)))
            best = int(dist[0, 0].argmin())
    return best, _one(s, best), _one(q, 0)


def draw(path: Location, *, query_frames: np.ndarray | None, support_frames: np.ndarray | None,
         explanation: Explanation | None, scores: dict[str, float], title: str) -> None:
    """Write one picture: frames (T, H, W, 3) uint8 of the query (top) and support (bottom), the alignment as lines
    between the items it pairs (opacity by weight), and the top class scores as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = (query_frames.shape[0] if query_frames is not None else
         explanation.query_items.shape[0] if explanation is not None else 1)
    fig = plt.figure(figsize=(2 + 1.4 * t, 4.2))
    ax = fig.add_axes((0.02, 0.05, 0.72, 0.82))
    ax.set_xlim(0, t)
    ax.set_ylim(0, 2.4)
    ax.axis("off")
    for frames, y, label in ((query_frames, 1.4, "query"), (support_frames, 0.0, "matched support")):
        if frames is not None:
            for i, frame in enumerate(frames):
                ax.imshow(frame, extent=(i + 0.05, i + 0.95, y, y + 0.9), aspect="auto")
        ax.text(0, y + 0.92 if y else -0.08, label, fontsize=8, va="bottom" if y else "top")
    if explanation is not None:
        w = explanation.weights.detach().cpu().numpy()
        q_pos = explanation.query_items.detach().cpu().numpy().mean(axis=1) * t
        s_pos = explanation.support_items.detach().cpu().numpy().mean(axis=1) * t
        top = w.max() if w.size and w.max() > 0 else 1.0
        for i, j in zip(*np.nonzero(w >= 0.05 * top), strict=True):
            ax.plot([q_pos[i], s_pos[j]], [1.4, 0.9], color="tab:red", alpha=float(w[i, j] / top), linewidth=2)
        ax.text(t, 1.15, explanation.kind, fontsize=8, ha="right", va="center", color="tab:red")
    bars = fig.add_axes((0.78, 0.15, 0.2, 0.65))
    names = list(scores)[::-1]
    bars.barh(range(len(names)), [scores[n] for n in names], color="tab:blue", height=0.4)
    for i, name in enumerate(names):
        bars.text(0.0, i + 0.28, name, fontsize=7, va="bottom")
    bars.set_yticks([])
    bars.set_ylim(-0.5, len(names))
    bars.set_xlim(0, 1)
    bars.tick_params(labelsize=7)
    bars.set_title("class scores", fontsize=8)
    fig.suptitle(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    storage.write_bytes(path, buffer.getvalue())


def _frames(predictor: Any, path: str | None, span: tuple[float, float] | None) -> np.ndarray | None:
    """The frames the method saw of a video (its segment centres, of the window when there is one)."""
    from fsar.data.transforms import centre_square
    from fsar.data.video import VideoDecodeError, load_windows

    if path is None:
        return None
    try:
        if span is None:
            return predictor.decode(path)
        windows = load_windows(path, num_segments=predictor.settings.frames, window_s=span[1] - span[0],
                               stride_s=span[1] - span[0])
        near = min(windows, key=lambda w: abs(w.start_s - span[0]))
        return centre_square(near.frames)
    except VideoDecodeError:
        return None


def explain_predictions(config: Any, predictor: Any, classes: list[Any], kind: str, *, limit: int) -> int:
    """Draw up to ``limit`` pictures of the predictions in ``config.out``; returns how many were drawn."""
    from fsar.prediction.output import EXPLAIN_DIR, QUERIES_FILE, read_predictions

    rows = [r for r in read_predictions(config.out).to_pylist() if not r["error"]][:limit]
    if not rows:
        return 0
    by_name = {c.name: c for c in classes}
    paths: dict[str, str] = {}
    if kind != "store":
        from fsar.data.feature_store import read_table

        table = read_table(storage.join(config.out, QUERIES_FILE), ["video_id", "path"])
        paths = dict(zip(table["video_id"].to_pylist(), table["path"].to_pylist(), strict=True))
    drawn = 0
    for n, row in enumerate(rows):
        span = (row["start_s"], row["end_s"]) if row["start_s"] is not None else None
        query_frames = _frames(predictor, paths.get(row["video_id"]), span)
        if query_frames is None:
            continue
        best_class = by_name[row["top_classes"][0]]
        query_features = predictor.encode([query_frames])[0]
        index, support_enc, query_enc = best_support(predictor, query_features, best_class.features)
        with torch.no_grad():
            explanation = predictor.method.explain(support_enc, query_enc)
        source = best_class.sources[index] if best_class.sources else None
        answer = "unknown" if row["unknown"] else row["top_classes"][0]
        where = f" {span[0]:.1f}-{span[1]:.1f} s" if span else ""
        draw(storage.join(config.out, EXPLAIN_DIR, f"{n:05d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', row['video_id'])}.png"),
             query_frames=query_frames, support_frames=_frames(predictor, source, None), explanation=explanation,
             scores=dict(zip(row["top_classes"], row["top_scores"], strict=True)),
             title=f"{row['video_id']}{where}: {answer} (best {row['top_classes'][0]} {row['top_scores'][0]:.2f}; "
                   f"support {best_class.video_ids[index]})")
        drawn += 1
    return drawn
