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
