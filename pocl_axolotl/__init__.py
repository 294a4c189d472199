"""pocl_axolotl: curriculum knowledge distillation (POCL) as an Axolotl plugin.

Enable it in an Axolotl YAML file with ``plugins: [pocl_axolotl.POCLPlugin]`` and a
``pocl:`` block; see the README for the keys.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so that `import pocl_axolotl.losses` needs no Axolotl import.
    if name == "POCLPlugin":
        from pocl_axolotl.plugin import POCLPlugin

        return POCLPlugin
    raise AttributeError(f"module 'pocl_axolotl' has no attribute {name!r}")


__all__ = ["POCLPlugin", "__version__"]
