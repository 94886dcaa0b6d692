"""``python -m mslesion.pretrain``: the U-Net pretraining command (mslesion.unet.pretrain), kept at its cited name."""

from .unet.pretrain import main

if __name__ == "__main__":
    main()
