"""``python -m mslesion.evaluate``: the U-Net evaluation command (mslesion.unet.evaluate), kept at its cited name."""

from .unet.evaluate import main

if __name__ == "__main__":
    main()
