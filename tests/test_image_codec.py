"""Image <-> numpy conversion against real sensor_msgs messages."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from magma_ros.image_codec import (
    ENCODINGS,
    ImageConversionError,
    compressed_to_numpy,
    depth_to_meters,
    image_to_numpy,
    message_to_rgb8,
    numpy_to_compressed,
    numpy_to_image,
    to_rgb8,
)

LISTED = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1"]


def random_array(encoding: str, height: int = 7, width: int = 5, seed: int = 0) -> np.ndarray:
    info = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width, info.channels) if info.channels > 1 else (height, width)
    if info.dtype == np.float32:
        return rng.normal(size=shape).astype(np.float32)
    return rng.integers(0, np.iinfo(info.dtype).max, size=shape, endpoint=True).astype(info.dtype)


@pytest.mark.parametrize("encoding", LISTED)
@pytest.mark.parametrize("padding", [0, 4, 12])
@pytest.mark.parametrize("big_endian", [False, True])
def test_round_trip_is_exact(encoding: str, padding: int, big_endian: bool) -> None:
    array = random_array(encoding)
    msg = numpy_to_image(array, encoding, row_padding=padding, big_endian=big_endian)
    assert isinstance(msg, Image)
    assert msg.step == array.shape[1] * ENCODINGS[encoding].pixel_bytes + padding
    assert len(msg.data) == msg.step * msg.height
    decoded = image_to_numpy(msg)
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def test_native_layout_is_zero_copy() -> None:
    array = random_array("rgb8", 48, 64)
    msg = numpy_to_image(array, "rgb8", row_padding=8)
    decoded = image_to_numpy(msg)
    # A view on the message buffer, not a copy.
    assert np.shares_memory(decoded, np.frombuffer(msg.data, dtype=np.uint8))


def test_to_rgb8_reorders_channels() -> None:
    rgb = random_array("rgb8", 6, 4)
    for encoding, array in (("rgb8", rgb), ("bgr8", rgb[:, :, ::-1]),
                            ("rgba8", np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])),
                            ("bgra8", np.dstack([rgb[:, :, ::-1], np.zeros(rgb.shape[:2], np.uint8)]))):
        np.testing.assert_array_equal(message_to_rgb8(numpy_to_image(np.ascontiguousarray(array), encoding)), rgb)
    grey = random_array("mono8")
    np.testing.assert_array_equal(to_rgb8(grey, "mono8"), np.repeat(grey[:, :, None], 3, axis=2))
    with pytest.raises(ImageConversionError, match="not a colour image"):
        message_to_rgb8(numpy_to_image(random_array("16UC1"), "16UC1"))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_round_trip(fmt: str) -> None:
    yy, xx = np.mgrid[0:48, 0:64]
    rgb = np.dstack([xx * 4, yy * 5, (xx + yy) * 2]).astype(np.uint8)
    msg = numpy_to_compressed(rgb, "rgb8", fmt=fmt)
    assert isinstance(msg, CompressedImage) and msg.format == fmt
    decoded = message_to_rgb8(msg)
    assert decoded.shape == rgb.shape
    if fmt == "png":
        np.testing.assert_array_equal(decoded, rgb)
    else:  # lossy, but close on a smooth image
        assert np.abs(decoded.astype(int) - rgb).mean() < 3.0


def test_depth_in_metres() -> None:
    mm = np.array([[0, 1000], [1500, 65535]], dtype=np.uint16)
    metres = depth_to_meters(numpy_to_image(mm, "16UC1"))
    assert np.isnan(metres[0, 0])
    np.testing.assert_allclose(metres[0, 1:], [1.0])
    np.testing.assert_allclose(metres[1], [1.5, 65.535], rtol=1e-6)
    f = np.array([[0.5, np.nan], [-1.0, 2.0]], dtype=np.float32)
    out = depth_to_meters(numpy_to_image(f, "32FC1", big_endian=True))
    np.testing.assert_array_equal(np.isnan(out), [[False, True], [True, False]])


def good_message() -> Image:
    return numpy_to_image(random_array("rgb8", 4, 3), "rgb8")


def malformed_variants() -> list[tuple[str, Image | CompressedImage, str]]:
    variants: list[tuple[str, Image | CompressedImage, str]] = []

    def variant(name: str, match: str, **fields: object) -> None:
        msg = good_message()
        for key, value in fields.items():
            setattr(msg, key, value)
        variants.append((name, msg, match))

    variant("unknown encoding", "unknown image encoding", encoding="yuv422_weird")
    variant("empty encoding", "unknown image encoding", encoding="")
    variant("zero width", "zero size", width=0)
    variant("zero height", "zero size", height=0)
    variant("step too small", "smaller than one row", step=8)
    variant("truncated data", "bytes but step", data=bytes(20))
    variant("extra data", "bytes but step", data=bytes(4 * 9 + 5))
    variant("empty data", "bytes but step", data=b"")
    variant("step larger than data", "bytes but step", step=40)
    variant("bad endianness flag", "is_bigendian", is_bigendian=7)
    msg16 = numpy_to_image(random_array("16UC1", 4, 3), "16UC1")
    msg16.step = 7
    msg16.data = bytes(7 * 4)
    variants.append(("odd step for 16-bit", msg16, "multiple of the 2-byte"))
    compressed = CompressedImage(format="jpeg", data=b"\xff\xd8 definitely not a jpeg")
    variants.append(("corrupt jpeg", compressed, "could not be decoded"))
    variants.append(("empty compressed", CompressedImage(format="png", data=b""), "no data"))
    variants.append(("unknown compression", CompressedImage(format="webp", data=b"RIFF...."), "unsupported"))
    return variants


@pytest.mark.parametrize("name,msg,match", malformed_variants(), ids=[v[0] for v in malformed_variants()])
def test_malformed_messages_raise_named_error(name: str, msg: Image | CompressedImage, match: str) -> None:
    with pytest.raises(ImageConversionError, match=match):
        if isinstance(msg, CompressedImage):
            compressed_to_numpy(msg)
        else:
            image_to_numpy(msg)


def test_encoding_errors_when_building_messages() -> None:
    with pytest.raises(ImageConversionError, match="needs dtype"):
        numpy_to_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    with pytest.raises(ImageConversionError, match="does not fit"):
        numpy_to_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ImageConversionError, match="zero-size"):
        numpy_to_image(np.zeros((0, 2, 3), np.uint8), "rgb8")
