import numpy as np
import pytest

from ckm_edge.runtime import codec


def _random_physical(rng, shape=(3, 16, 16)):
    gain = rng.uniform(codec.GAIN_DB_MIN, codec.GAIN_DB_MAX, shape)
    sine = rng.uniform(-1, 1, shape)
    building = rng.random(shape) < 0.3
    return gain, sine, building


def test_encoding_matches_the_paper_constants():
    building = np.array([[False, False, False, True]])
    gain = np.array([[-250.0, -150.0, -50.0, np.nan]])
    sine = np.array([[-1.0, 0.0, 1.0, np.nan]])
    px = codec.encode(gain, sine, building)
    np.testing.assert_allclose(px[0], [[0.0, 0.5, 1.0, 0.0]])
    np.testing.assert_allclose(px[1], [[0.3, 0.65, 1.0, 0.0]])


def test_round_trip_within_float32_rounding():
    rng = np.random.default_rng(0)
    gain, sine, building = _random_physical(rng)
    px = codec.encode(gain, sine, building)
    assert px.dtype == np.float32 and px.shape == (3, 2, 16, 16)
    back = codec.decode(px)
    np.testing.assert_array_equal(back.building, building)
    outdoor = ~building
    np.testing.assert_allclose(back.gain_db[outdoor], gain[outdoor], atol=200 * 2**-23 * 2)
    np.testing.assert_allclose(back.aoa_sine[outdoor], sine[outdoor], atol=2**-23 * 4)
    assert np.isnan(back.gain_db[building]).all() and np.isnan(back.aoa_sine[building]).all()
    np.testing.assert_allclose(codec.encode(back.gain_db, back.aoa_sine, back.building), px, atol=2e-7)


def test_rmse_factors_are_the_papers():
    rng = np.random.default_rng(1)
    true = codec.encode(*_random_physical(rng, (4, 8, 8)))
    pred = true.copy()
    pred[:, 0] += 0.01  # 0.01 pixel of gain = 2 dB
    pred[:, 1] += 0.035  # 0.035 pixel of AoA = 0.1 in sine
    pred = np.clip(pred, 0, 1)
    gain_err = codec.gain_rmse_db(pred, true)
    aoa_err = codec.aoa_sine_rmse(pred, true)
    assert gain_err.shape == (4,)
    pix_gain = np.sqrt(((pred[:, 0] - true[:, 0]) ** 2).mean(axis=(1, 2)))
    pix_aoa = np.sqrt(((pred[:, 1] - true[:, 1]) ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(gain_err, 200 * pix_gain, rtol=1e-6)
    np.testing.assert_allclose(aoa_err, 20 / 7 * pix_aoa, rtol=1e-6)
    assert codec.GAIN_RMSE_FACTOR == 200 and codec.AOA_RMSE_FACTOR == pytest.approx(20 / 7)


def test_outdoor_only_rmse_ignores_buildings():
    building = np.zeros((1, 4, 4), bool)
    building[0, :2] = True
    true = codec.encode(np.full((1, 4, 4), -100.0), np.zeros((1, 4, 4)), building)
    pred = true.copy()
    pred[0, 0, :2] = 0.5  # wrong only on building cells
    assert codec.gain_rmse_db(pred, true, outdoor_only=True)[0] == 0.0
    assert codec.gain_rmse_db(pred, true)[0] > 0.0


def test_rmse_is_per_sample():
    rng = np.random.default_rng(2)
    true = codec.encode(*_random_physical(rng, (3, 8, 8)))
    pred = np.clip(true + rng.normal(0, 0.02, true.shape), 0, 1).astype(np.float32)
    batched = codec.gain_rmse_db(pred, true)
    single = [codec.gain_rmse_db(pred[i], true[i]) for i in range(3)]
    np.testing.assert_allclose(batched, np.array(single).ravel())


def test_building_mask_reads_the_aoa_gap():
    px = np.zeros((2, 1, 3), np.float32)
    px[1] = [[0.0, 0.14, 0.31]]
    np.testing.assert_array_equal(codec.building_mask(px), [[True, True, False]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_rejects_non_finite_outdoor_values(bad):
    gain = np.full((2, 2), -100.0)
    gain[1, 1] = bad
    with pytest.raises(codec.CodecError, match=r"gain_db has 1 non-finite value\(s\), first at index \(1, 1\)"):
        codec.encode(gain, np.zeros((2, 2)), np.zeros((2, 2), bool))


def test_encode_rejects_out_of_range_unless_clipping():
    gain = np.array([[-300.0, -100.0]])
    with pytest.raises(codec.CodecError, match=r"gain_db .* outside \[-250.0, -50.0\], first -300"):
        codec.encode(gain, np.zeros((1, 2)), np.zeros((1, 2), bool))
    px = codec.encode(gain, np.zeros((1, 2)), np.zeros((1, 2), bool), clip_gain=True)
    assert px[0, 0, 0] == 0.0
    with pytest.raises(codec.CodecError, match="aoa_sine"):
        codec.encode(np.full((1, 2), -100.0), np.array([[0.0, 1.5]]), np.zeros((1, 2), bool))


def test_encode_rejects_shape_and_mask_mistakes():
    with pytest.raises(codec.CodecError, match="share one shape"):
        codec.encode(np.zeros((2, 2)) - 100, np.zeros((2, 3)), np.zeros((2, 2), bool))
    with pytest.raises(codec.CodecError, match="boolean"):
        codec.encode(np.zeros((2, 2)) - 100, np.zeros((2, 2)), np.zeros((2, 2)))


def test_decode_rejects_bad_pixels_and_clips_on_request():
    px = np.full((2, 2, 2), 0.5, np.float32)
    px[0, 0, 0] = 1.2
    with pytest.raises(codec.CodecError, match=r"outside \[0.0, 1.0\]"):
        codec.decode(px)
    assert codec.decode(px, clip=True).gain_db[0, 0] == pytest.approx(-50.0)
    px[0, 0, 0] = np.nan
    with pytest.raises(codec.CodecError, match="non-finite"):
        codec.decode(px, clip=True)
    with pytest.raises(codec.CodecError, match=r"\(\.\.\., 2, H, W\)"):
        codec.decode(np.zeros((3, 4, 4), np.float32))
