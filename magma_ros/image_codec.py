"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

ROS-free: functions take any object with the message's fields (rclpy messages,
rosbags-deserialized messages, plain dataclasses), so the same code converts live
frames and recorded ones. Building a message needs a message class; the default is
``sensor_msgs.msg.Image``, imported only when needed.

Decoding is zero-copy where the layout allows (native byte order): the returned
array is a view on the message's buffer with the row stride of ``step``; it is
read-only when the buffer is. Byte-swapped data is copied. Every malformed message
raises :class:`ImageConversionError` naming what is wrong.

When ``cv_bridge`` is importable (a real ROS install), :func:`image_to_numpy` can use
it for the conversion itself via ``prefer_cv_bridge=True``; validation stays ours
so errors look the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


class ImageConversionError(ValueError):
    """A camera message cannot be converted: the message says what is wrong."""


@dataclass(frozen=True)
class EncodingInfo:
    """Channels and element type of one ROS image encoding."""

    channels: int
    dtype: np.dtype

    @property
    def pixel_bytes(self) -> int:
        return self.channels * self.dtype.itemsize


_U8, _U16, _I16, _F32 = np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32)

ENCODINGS: dict[str, EncodingInfo] = {
    "rgb8": EncodingInfo(3, _U8),
    "bgr8": EncodingInfo(3, _U8),
    "rgba8": EncodingInfo(4, _U8),
    "bgra8": EncodingInfo(4, _U8),
    "mono8": EncodingInfo(1, _U8),
    "mono16": EncodingInfo(1, _U16),
    "8UC1": EncodingInfo(1, _U8),
    "8UC3": EncodingInfo(3, _U8),
    "8UC4": EncodingInfo(4, _U8),
    "16UC1": EncodingInfo(1, _U16),
    "16SC1": EncodingInfo(1, _I16),
    "32FC1": EncodingInfo(1, _F32),
}

# Encodings that can stand for a colour camera frame, and how to get RGB from them.
_COLOUR_ORDER = {"rgb8": (0, 1, 2), "rgba8": (0, 1, 2), "bgr8": (2, 1, 0), "bgra8": (2, 1, 0), "8UC3": (2, 1, 0)}
_GREY = ("mono8", "8UC1")


def encoding_info(encoding: str) -> EncodingInfo:
    try:
        return ENCODINGS[encoding]
    except KeyError:
        raise ImageConversionError(
            f"unknown image encoding {encoding!r}; supported: {', '.join(sorted(ENCODINGS))}"
        ) from None


def _buffer(data: Any) -> memoryview:
    try:
        return memoryview(data).cast("B")
    except TypeError:
        # Plain lists (tests, hand-built messages) are copied once.
        try:
            return memoryview(bytes(data))
        except (TypeError, ValueError) as err:
            raise ImageConversionError(f"image data is not a byte buffer: {type(data).__name__}") from err


def image_to_numpy(msg: Any, prefer_cv_bridge: bool = False) -> np.ndarray:
    """Decode a sensor_msgs/Image into an array of shape (H, W) or (H, W, C).

    Channel order is the encoding's own (bgr8 stays BGR); see :func:`to_rgb8`.
    Raises ImageConversionError for unknown encodings, zero sizes, a step smaller
    than a row, a step that is not a whole number of elements, or a data length
    other than step * height.
    """
    encoding = str(getattr(msg, "encoding", ""))
    info = encoding_info(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size: {width}x{height} ({encoding})")
    row_bytes = width * info.pixel_bytes
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row of {width} {encoding} pixels ({row_bytes} bytes)"
        )
    if step % info.dtype.itemsize:
        raise ImageConversionError(
            f"step {step} is not a multiple of the {info.dtype.itemsize}-byte {encoding} element size"
        )
    big_endian = int(getattr(msg, "is_bigendian", 0))
    if big_endian not in (0, 1):
        raise ImageConversionError(f"is_bigendian must be 0 or 1, got {big_endian}")
    buffer = _buffer(msg.data)
    if len(buffer) != step * height:
        raise ImageConversionError(
            f"data holds {len(buffer)} bytes but step*height = {step}*{height} = {step * height}"
        )
    if prefer_cv_bridge:
        bridged = _via_cv_bridge(msg)
        if bridged is not None:
            return bridged

    dtype = info.dtype.newbyteorder(">" if big_endian else "<") if info.dtype.itemsize > 1 else info.dtype
    shape: tuple[int, ...] = (height, width, info.channels) if info.channels > 1 else (height, width)
    strides: tuple[int, ...] = (step, info.pixel_bytes, dtype.itemsize)[: len(shape)]
    # A strided view on the message buffer: no copy, whatever the row padding.
    array = np.ndarray(shape, dtype=dtype, buffer=buffer, strides=strides)
    if not dtype.isnative:
        array = array.astype(info.dtype.newbyteorder("="))
    return array


def _via_cv_bridge(msg: Any) -> np.ndarray | None:
    try:
        from cv_bridge import CvBridge  # type: ignore[import-not-found]
    except ImportError:
        return None
    return np.asarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding="passthrough"))


def numpy_to_image(
    array: np.ndarray,
    encoding: str,
    header: Any = None,
    msg_cls: Any = None,
    row_padding: int = 0,
    big_endian: bool = False,
) -> Any:
    """Encode an (H, W) or (H, W, C) array as a sensor_msgs/Image (or ``msg_cls``).

    ``row_padding`` extra bytes are appended to every row (step > width*pixel
    bytes), ``big_endian`` stores multi-byte elements big-endian; both exist to
    produce every layout a driver may send.
    """
    info = encoding_info(encoding)
    array = np.asarray(array)
    expected_ndim = 2 if info.channels == 1 else 3
    if array.ndim == 3 and info.channels == 1 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != expected_ndim or (info.channels > 1 and array.shape[2] != info.channels):
        raise ImageConversionError(
            f"array of shape {array.shape} does not fit {encoding} ({info.channels} channel(s))"
        )
    if array.dtype != info.dtype:
        raise ImageConversionError(f"{encoding} needs dtype {info.dtype}, got {array.dtype}")
    height, width = array.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"cannot encode a zero-size image ({width}x{height})")
    if row_padding < 0 or row_padding % info.dtype.itemsize:
        raise ImageConversionError(f"row_padding must be a non-negative multiple of {info.dtype.itemsize}")
    stored = array.astype(info.dtype.newbyteorder(">" if big_endian else "<"), copy=False)
    row_bytes = width * info.pixel_bytes
    if row_padding:
        padded = np.zeros((height, row_bytes + row_padding), dtype=np.uint8)
        padded[:, :row_bytes] = np.ascontiguousarray(stored).view(np.uint8).reshape(height, row_bytes)
        data = padded.tobytes()
    else:
        data = np.ascontiguousarray(stored).tobytes()
    if msg_cls is None:
        from sensor_msgs.msg import Image as msg_cls  # noqa: N813  (lazy: keeps this module ROS-free)
    msg = msg_cls()
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = int(big_endian)
    msg.step = row_bytes + row_padding
    msg.data = data
    return msg


def compressed_to_numpy(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a sensor_msgs/CompressedImage (jpeg/png) into (array, encoding).

    Colour images come back as ``bgr8`` (OpenCV's order), greyscale as ``mono8``,
    16-bit PNGs as ``mono16``.
    """
    import cv2

    fmt = str(getattr(msg, "format", "")).lower()
    if fmt and not any(kind in fmt for kind in ("jpeg", "jpg", "png")):
        raise ImageConversionError(f"unsupported CompressedImage format {fmt!r} (jpeg or png expected)")
    buffer = np.frombuffer(_buffer(msg.data), dtype=np.uint8)
    if buffer.size == 0:
        raise ImageConversionError("CompressedImage has no data")
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise ImageConversionError(f"CompressedImage data ({buffer.size} bytes, {fmt or 'no format'}) "
                                   "could not be decoded")
    if array.ndim == 2:
        return array, "mono16" if array.dtype == np.uint16 else "mono8"
    if array.shape[2] == 4:
        return array, "bgra8"
    return array, "bgr8"


def numpy_to_compressed(array: np.ndarray, encoding: str, fmt: str = "jpeg", header: Any = None,
                        msg_cls: Any = None, quality: int = 90) -> Any:
    """Encode an array as a sensor_msgs/CompressedImage (jpeg or png)."""
    import cv2

    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"unsupported compression {fmt!r} (jpeg or png)")
    bgr = _to_opencv_order(np.asarray(array), encoding)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode a {bgr.shape} {bgr.dtype} image as {fmt}")
    if msg_cls is None:
        from sensor_msgs.msg import CompressedImage as msg_cls  # noqa: N813
    msg = msg_cls()
    if header is not None:
        msg.header = header
    msg.format = fmt
    msg.data = encoded.tobytes()
    return msg


def _to_opencv_order(array: np.ndarray, encoding: str) -> np.ndarray:
    if encoding in ("rgb8", "rgba8"):
        return np.ascontiguousarray(array[:, :, 2::-1]) if encoding == "rgb8" else np.ascontiguousarray(
            array[:, :, [2, 1, 0, 3]])
    encoding_info(encoding)
    return array


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Turn a decoded colour or grey frame into an (H, W, 3) uint8 RGB array.

    Depth and other non-colour encodings are refused: a policy must never act on
    a depth map mistaken for a camera frame.
    """
    if encoding in _COLOUR_ORDER:
        order = _COLOUR_ORDER[encoding]
        if order == (0, 1, 2) and array.shape[2] == 3:
            return array
        return np.ascontiguousarray(array[:, :, list(order)])
    if encoding in _GREY:
        return np.repeat(array[:, :, None], 3, axis=2)
    raise ImageConversionError(f"{encoding} is not a colour image encoding; the policy needs rgb/bgr/mono8")


def message_to_rgb8(msg: Any) -> np.ndarray:
    """Any supported Image or CompressedImage message -> (H, W, 3) uint8 RGB."""
    if hasattr(msg, "format") and not hasattr(msg, "encoding"):
        array, encoding = compressed_to_numpy(msg)
        if array.dtype != np.uint8:
            raise ImageConversionError("16-bit compressed images are not colour frames")
        return to_rgb8(array, encoding)
    return to_rgb8(image_to_numpy(msg), str(msg.encoding))


def depth_to_meters(msg: Any) -> np.ndarray:
    """A depth Image (16UC1/mono16 in millimetres, 32FC1 in metres) -> float32 metres.

    Invalid depth (0 for integer encodings, NaN/inf/<=0 for float) becomes NaN.
    """
    array = image_to_numpy(msg)
    if msg.encoding in ("16UC1", "mono16"):
        metres = array.astype(np.float32) * np.float32(0.001)
        metres[array == 0] = np.nan
        return metres
    if msg.encoding == "32FC1":
        metres = np.array(array, dtype=np.float32)
        metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
        return metres
    raise ImageConversionError(f"{msg.encoding} is not a depth encoding (16UC1, mono16 or 32FC1)")


def resize_frame(image: np.ndarray, size: int) -> np.ndarray:
    """Resize an (H, W, 3) frame to size x size like ``PIL.Image.resize`` (bicubic) does.

    The one resize of the policy's input frames (magma_ros.model.policy) and of the training
    frames the dataset builder writes, so a model sees the same pixels in training and serving.
    """
    if image.shape[0] == size and image.shape[1] == size:
        return image
    from PIL import Image

    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
