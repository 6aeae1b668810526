"""The built-in experiment files (each defines ``get_config()``, loaded by path with
``jaxfcn.config.load_config``). ``jaxfcn/configs`` is a link to this folder, so the files install as the
package ``jaxfcn.configs`` and ``jaxfcn reproduce`` finds its grids after any kind of install, while in a
checkout they stay at ``configs/`` (``--config configs/tissue_2d.py``)."""
import os

BUILTIN_CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))
