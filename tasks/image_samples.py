"""PNG grids of generated and completed images.

`image_grid` tiles uint8 images [n, height, width, 3] row by row, with
`padding` pixels of `PADDING_VALUE` around and between the tiles, and
`write_image_grid` saves the grid with matplotlib, which needs no display.
"""

import os
import pathlib
from typing import Union

import numpy as np

# Value of the padding subpixels between tiles: white.
PADDING_VALUE = 255


def grid_size(n_rows: int, n_columns: int, tile_height: int, tile_width: int,
              padding: int):
  """Return (height, width) in pixels of a grid of n_rows x n_columns tiles."""
  return (n_rows * tile_height + (n_rows + 1) * padding,
          n_columns * tile_width + (n_columns + 1) * padding)


def tile_origin(row: int, column: int, tile_height: int, tile_width: int,
                padding: int):
  """Return the (y, x) pixel of the top-left corner of tile (row, column)."""
  return (padding + row * (tile_height + padding),
          padding + column * (tile_width + padding))


def image_grid(images: np.ndarray, n_columns: int,
               padding: int = 2) -> np.ndarray:
  """Tile images into one image, filling rows from left to right.

  Args:
    images: uint8 [n, height, width, 3].
    n_columns: tiles per row. The last row may be partly empty (padding).
    padding: pixels of padding around and between tiles.

  Returns:
    uint8 [grid_height, grid_width, 3], of the size `grid_size` gives for
    ceil(n / n_columns) rows.

  Raises:
    ValueError: the images are not uint8 [n, height, width, 3] with n > 0, or
      n_columns or padding is invalid.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] == 0:
    raise ValueError(
        f'images must have shape [n, height, width, 3] with n > 0, got '
        f'{images.shape}.')
  if images.dtype != np.uint8:
    raise ValueError(f'images must be uint8, got {images.dtype}.')
  if isinstance(n_columns, bool) or not isinstance(n_columns, int) or (
      n_columns < 1):
    raise ValueError(
        f'n_columns must be a positive integer, got {n_columns!r}.')
  if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
    raise ValueError(f'padding must be an integer >= 0, got {padding!r}.')

  n_images, tile_height, tile_width, _ = images.shape
  n_rows = -(-n_images // n_columns)
  height, width = grid_size(n_rows, n_columns, tile_height, tile_width,
                            padding)
  grid = np.full((height, width, 3), PADDING_VALUE, dtype=np.uint8)
  for index, image in enumerate(images):
    y, x = tile_origin(index // n_columns, index % n_columns, tile_height,
                       tile_width, padding)
    grid[y:y + tile_height, x:x + tile_width] = image
  return grid


def write_image_grid(images: np.ndarray, path: Union[str, pathlib.Path],
                     n_columns: int, padding: int = 2) -> str:
  """Write `image_grid(images, n_columns, padding)` as a PNG file.

  The file is RGBA with alpha 255 everywhere, because matplotlib adds an
  alpha channel to RGB input. Returns the path as a string.
  """
  # matplotlib.image.imsave writes through Pillow and needs no backend.
  from matplotlib import image as matplotlib_image  # pylint: disable=g-import-not-at-top

  grid = image_grid(images, n_columns, padding)
  path = os.fspath(path)
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  matplotlib_image.imsave(path, grid, format='png')
  return path
