"""A drawn talking face whose mouth follows the articulation tracks of data/speech.py.

The face is built so that OpenCV's frontal Haar cascade finds it: a bright skin oval with dark eye
sockets and brows above a brighter nose bridge and cheeks, and a dark mouth below (the light/dark
pattern the cascade's first stages look for). Head, eyes, brows, nose and shading are drawn once per
utterance into a sprite; each frame warps the sprite (head motion) and draws the mouth and eyelids.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MOUTH_GAIN = 2.2
"""Drawn opening = min(1, MOUTH_GAIN * jaw): speech jaw tracks rarely pass 0.45, so this makes them span the range."""

SKIN_TONES = (  # RGB, light to dark
    (241, 204, 177),
    (226, 182, 150),
    (205, 152, 118),
    (176, 122, 90),
    (141, 94, 66),
    (122, 82, 58),
)


@dataclass(frozen=True)
class Appearance:
    """Per-speaker look and motion style."""

    face: float  # face width in pixels
    cx: float  # face centre in the frame
    cy: float
    skin: tuple[int, int, int]  # RGB
    lip: tuple[int, int, int]
    background: tuple[tuple[int, int, int], tuple[int, int, int]]  # top and bottom colours
    light: float  # horizontal lighting slope (-1 left lit .. 1 right lit)
    gain: float  # global brightness
    motion: float  # head-motion amplitude in pixels
    noise: float  # per-frame pixel noise sigma
    hair: tuple[int, int, int]

    @classmethod
    def random(
        cls, rng: np.random.Generator, size: tuple[int, int], slot: tuple[float, float] | None = None
    ) -> Appearance:
        """A random look that fits in `size` = (W, H); `slot` = (x0, x1) fraction of the width to stay in."""
        w, h = size
        x0, x1 = slot if slot is not None else (0.0, 1.0)
        slot_w = (x1 - x0) * w
        face = float(rng.uniform(0.48, 0.62) * min(slot_w, h))
        margin_x = max(0.0, slot_w / 2 - face * 0.62)
        margin_y = max(0.0, h / 2 - face * 0.78)
        skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
        jitter = rng.integers(-10, 11, 3)
        skin = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(skin, jitter, strict=True))
        lip = (int(rng.uniform(150, 200)), int(rng.uniform(60, 100)), int(rng.uniform(70, 110)))
        bg_top = tuple(int(c) for c in rng.integers(20, 230, 3))
        bg_bot = tuple(int(np.clip(c + d, 0, 255)) for c, d in zip(bg_top, rng.integers(-60, 61, 3), strict=True))
        hair = tuple(int(c) for c in rng.integers(10, 90, 3))
        return cls(
            face=face,
            cx=float(x0 * w + slot_w / 2 + rng.uniform(-0.5, 0.5) * margin_x),
            cy=float(h / 2 + rng.uniform(-0.5, 0.5) * margin_y),
            skin=skin,
            lip=lip,
            background=(bg_top, bg_bot),
            light=float(rng.uniform(-0.6, 0.6)),
            gain=float(rng.uniform(0.8, 1.15)),
            motion=float(rng.uniform(0.0, 0.05) * face),
            noise=float(rng.uniform(0.0, 4.0)),
            hair=hair,
        )


def _pt(x: float, y: float) -> tuple[int, int]:
    """cv2 drawing with 4 fractional bits (shift=4) for smooth sub-pixel motion."""
    return int(round(x * 16)), int(round(y * 16))


def _ax(a: float, b: float) -> tuple[int, int]:
    return max(1, int(round(a * 16))), max(1, int(round(b * 16)))


def background(app: Appearance, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A vertical colour gradient with a few soft blobs (static per utterance)."""
    w, h = size
    top, bot = (np.array(c, np.float32) for c in app.background)
    ramp = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    img = np.broadcast_to(top * (1 - ramp) + bot * ramp, (h, w, 3)).copy()
    for _ in range(3):
        c = rng.integers(0, 256, 3).astype(np.float32)
        centre = _pt(float(rng.uniform(0, w)), float(rng.uniform(0, h)))
        r = float(rng.uniform(0.1, 0.3) * max(w, h))
        layer = img.copy()
        cv2.circle(layer, centre, int(r * 16), c.tolist(), -1, cv2.LINE_AA, 4)
        img = 0.75 * img + 0.25 * layer
    return cv2.GaussianBlur(img, (0, 0), 3.0)


def face_sprite(app: Appearance, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Head without mouth and eyelids: (H, W, 3) float RGB and (H, W) alpha, at the rest position."""
    w, h = size
    s = app.face
    cx, cy = app.cx, app.cy
    rgb = np.zeros((h, w, 3), np.float32)
    alpha = np.zeros((h, w), np.float32)
    skin = np.array(app.skin, np.float32)
    # hair cap behind the head, then the head oval
    cv2.ellipse(rgb, _pt(cx, cy - 0.12 * s), _ax(0.56 * s, 0.66 * s), 0, 0, 360, app.hair, -1, cv2.LINE_AA, 4)
    cv2.ellipse(alpha, _pt(cx, cy - 0.12 * s), _ax(0.56 * s, 0.66 * s), 0, 180, 360, 1.0, -1, cv2.LINE_AA, 4)
    cv2.ellipse(rgb, _pt(cx, cy), _ax(0.5 * s, 0.68 * s), 0, 0, 360, skin.tolist(), -1, cv2.LINE_AA, 4)
    cv2.ellipse(alpha, _pt(cx, cy), _ax(0.5 * s, 0.68 * s), 0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    # ears
    for side in (-1, 1):
        cv2.ellipse(
            rgb,
            _pt(cx + side * 0.5 * s, cy - 0.02 * s),
            _ax(0.07 * s, 0.14 * s),
            0,
            0,
            360,
            (skin * 0.9).tolist(),
            -1,
            cv2.LINE_AA,
            4,
        )
        cv2.ellipse(
            alpha, _pt(cx + side * 0.5 * s, cy - 0.02 * s), _ax(0.07 * s, 0.14 * s), 0, 0, 360, 1.0, -1, cv2.LINE_AA, 4
        )
    # shading: side lighting and a darker rim, so the face is not a flat disc
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx - cx) / (0.5 * s)
    v = (yy - cy) / (0.68 * s)
    rim = np.clip(1.0 - 0.35 * np.clip(u**2 + v**2 - 0.45, 0, None), 0.55, 1.0)
    side = 1.0 + 0.18 * app.light * np.clip(u, -1.5, 1.5)
    rgb *= (rim * side)[..., None]
    dark = (skin * 0.25).tolist()
    # cheek highlights under the eyes and a lit forehead: the bright bands of the Haar pattern
    glow = np.zeros((h, w), np.float32)
    for side_x in (-1, 1):
        cv2.ellipse(
            glow, _pt(cx + side_x * 0.22 * s, cy + 0.1 * s), _ax(0.14 * s, 0.1 * s), 0, 0, 360, 1.0, -1, cv2.LINE_AA, 4
        )
    cv2.ellipse(glow, _pt(cx, cy - 0.36 * s), _ax(0.3 * s, 0.1 * s), 0, 0, 360, 1.0, -1, cv2.LINE_AA, 4)
    glow = cv2.GaussianBlur(glow, (0, 0), 0.05 * s)
    rgb *= (1.0 + 0.22 * glow)[..., None]
    # eye sockets (the darkest band of the Haar pattern), small whites, large irises
    ey = cy - 0.1 * s
    for side_x in (-1, 1):
        ex = cx + side_x * 0.2 * s
        cv2.ellipse(rgb, _pt(ex, ey), _ax(0.15 * s, 0.085 * s), 0, 0, 360, (skin * 0.4).tolist(), -1, cv2.LINE_AA, 4)
        cv2.ellipse(rgb, _pt(ex, ey), _ax(0.085 * s, 0.036 * s), 0, 0, 360, (200, 200, 195), -1, cv2.LINE_AA, 4)
        cv2.circle(rgb, _pt(ex, ey), int(0.04 * s * 16), (35, 25, 20), -1, cv2.LINE_AA, 4)
        # brows
        cv2.ellipse(
            rgb,
            _pt(ex, ey - 0.1 * s),
            _ax(0.13 * s, 0.035 * s),
            0,
            180,
            360,
            (skin * 0.3).tolist(),
            max(1, int(0.045 * s)),
            cv2.LINE_AA,
            4,
        )
    # nose: bright bridge (kept at skin level) with side shadows and nostrils
    ny = cy + 0.12 * s
    for side_x in (-1, 1):
        cv2.line(
            rgb,
            _pt(cx + side_x * 0.05 * s, ey + 0.02 * s),
            _pt(cx + side_x * 0.07 * s, ny - 0.01 * s),
            (skin * 0.78).tolist(),
            max(1, int(0.02 * s)),
            cv2.LINE_AA,
            4,
        )
        cv2.ellipse(rgb, _pt(cx + side_x * 0.04 * s, ny), _ax(0.03 * s, 0.018 * s), 0, 0, 360, dark, -1, cv2.LINE_AA, 4)
    return rgb, alpha


@dataclass(frozen=True)
class Pose:
    """Per-frame head pose: translation in pixels, rotation in degrees, scale factor."""

    dx: float = 0.0
    dy: float = 0.0
    angle: float = 0.0
    scale: float = 1.0


def head_motion(rng: np.random.Generator, n_frames: int, app: Appearance) -> list[Pose]:
    """Smooth random head motion (a sum of slow sinusoids)."""
    t = np.arange(n_frames, dtype=np.float64)
    poses = []
    params = rng.uniform(0.02, 0.12, 4), rng.uniform(0, 2 * np.pi, 4)
    freq, ph = params
    for i in range(n_frames):
        dx = app.motion * np.sin(freq[0] * t[i] + ph[0])
        dy = 0.6 * app.motion * np.sin(freq[1] * t[i] + ph[1])
        ang = 3.0 * (app.motion / max(app.face, 1)) * 10 * np.sin(freq[2] * t[i] + ph[2])
        sc = 1.0 + 0.03 * (app.motion / max(app.face, 1)) * 10 * np.sin(freq[3] * t[i] + ph[3])
        poses.append(Pose(float(dx), float(dy), float(ang), float(sc)))
    return poses


def _affine(app: Appearance, pose: Pose) -> np.ndarray:
    m = cv2.getRotationMatrix2D((app.cx, app.cy), pose.angle, pose.scale)
    m[:, 2] += (pose.dx, pose.dy)
    return m


def draw_face(
    canvas: np.ndarray,
    app: Appearance,
    sprite: tuple[np.ndarray, np.ndarray],
    pose: Pose,
    jaw: float,
    width: float,
    blink: float = 0.0,
) -> None:
    """Composite one face onto `canvas` (float RGB, in place) with the given mouth state.

    jaw: opening 0..1 (mouth height), width: -1 (rounded, narrow) .. 1 (spread), blink: 0 open .. 1 closed.
    """
    h, w = canvas.shape[:2]
    m = _affine(app, pose)
    rgb = cv2.warpAffine(sprite[0], m, (w, h), flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(sprite[1], m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    canvas *= 1 - alpha
    canvas += rgb * alpha
    s = app.face * pose.scale
    skin = np.array(app.skin, np.float32)

    def at(x: float, y: float) -> tuple[float, float]:
        p = m @ np.array([x, y, 1.0])
        return float(p[0]), float(p[1])

    # mouth: lips outline, dark cavity, upper teeth; width from the vowel class, height from the jaw
    mx, my = at(app.cx, app.cy + 0.33 * s / pose.scale)
    half_w = 0.25 * s * (1.0 + 0.2 * width)
    # speech keeps the jaw track mostly in 0.1-0.45: the gain spreads that over the drawn range, so a mouth
    # crop shows clearly how open the mouth is (with the raw track the cavity was a few pixels high)
    opening = min(1.0, MOUTH_GAIN * jaw)
    open_h = 0.012 * s + 0.19 * s * opening
    lip_t = 0.03 * s
    angle = -pose.angle
    cv2.ellipse(
        canvas, _pt(mx, my), _ax(half_w + lip_t * 0.6, open_h + lip_t), angle, 0, 360, app.lip, -1, cv2.LINE_AA, 4
    )
    cv2.ellipse(canvas, _pt(mx, my), _ax(half_w, open_h), angle, 0, 360, (75, 28, 32), -1, cv2.LINE_AA, 4)
    if opening > 0.3:
        teeth_h = min(open_h * 0.35, 0.03 * s)
        ty = my - open_h + teeth_h * 0.8
        cv2.ellipse(canvas, _pt(mx, ty), _ax(half_w * 0.7, teeth_h), angle, 0, 360, (230, 228, 220), -1, cv2.LINE_AA, 4)
    # chin moves down with the jaw (a soft shadow under the lower lip)
    cy_chin = my + open_h + 0.09 * s
    cv2.ellipse(
        canvas, _pt(mx, cy_chin), _ax(0.12 * s, 0.025 * s), angle, 0, 180, (skin * 0.8).tolist(), -1, cv2.LINE_AA, 4
    )
    if blink > 0:
        for side_x in (-1, 1):
            ex, ey = at(app.cx + side_x * 0.2 * app.face, app.cy - 0.1 * app.face)
            cv2.ellipse(
                canvas,
                _pt(ex, ey),
                _ax(0.11 * s, 0.05 * s * blink),
                angle,
                0,
                360,
                (skin * 0.8).tolist(),
                -1,
                cv2.LINE_AA,
                4,
            )


def finish(canvas: np.ndarray, app: Appearance, rng: np.random.Generator) -> np.ndarray:
    """Lighting gain, sensor noise, uint8 RGB."""
    img = canvas * app.gain
    if app.noise > 0:
        img = img + rng.normal(0, app.noise, img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
