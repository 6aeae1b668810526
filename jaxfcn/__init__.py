"""jaxfcn: what does transfer learning really do to a fully convolutional segmentation network?

A JAX/Flax toolkit reproducing and extending Karimi, Warfield & Gholipour, "Critical Assessment of
Transfer Learning for Medical Image Segmentation with Fully Convolutional Neural Networks" (2020/2021).
"""

__version__ = "0.1.0"
