import numpy as np

from wsis.masks import resize_nearest


def test_nearest_resize_samples_pixel_centres():
    # 4 columns -> 2: output column j reads input column floor((j + 0.5) * 2) = 1, 3
    m = np.zeros((1, 2, 4), bool)
    m[0, :, 1] = True
    out = resize_nearest(m, 2, 2)
    assert out[0].tolist() == [[True, False], [True, False]]
    # 3 rows -> 6: output row i reads floor((i + 0.5) / 2) = 0, 0, 1, 1, 2, 2
    m = np.zeros((1, 3, 1), bool)
    m[0, 1, 0] = True
    assert resize_nearest(m, 6, 1)[0, :, 0].tolist() == [False, False, True, True, False, False]


def test_resize_nonempty_keeps_a_thin_mask_that_nearest_sampling_misses():
    from wsis.masks import resize_nonempty

    m = np.zeros((2, 9, 9), bool)
    m[0, :, 4] = True  # a 1-pixel column; at 1/3 scale nearest-exact samples columns 1, 4, 7 ...
    m[1, :, 3] = True  # ... so this column is missed by every sample
    assert not resize_nearest(m[1:], 3, 3).any()
    out = resize_nonempty(m, 3, 3)
    # the sampled column is left as nearest sampling gives it
    assert out[0].tolist() == resize_nearest(m[:1], 3, 3)[0].tolist() == [[False, True, False]] * 3
    # the missed one keeps the cells whose 3x3 area it covers most: column 3 lies in output column 1
    assert out[1].tolist() == [[False, True, False]] * 3
    # an empty mask stays empty
    assert not resize_nonempty(np.zeros((1, 9, 9), bool), 3, 3).any()
