"""Models: the functional Flax U-Net (encoder / decoder / head)."""
from jaxfcn.models.unet import UNet, build_model, init_variables, input_shape, layer_names

__all__ = ["UNet", "build_model", "init_variables", "input_shape", "layer_names"]
