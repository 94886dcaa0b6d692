"""The U-Net family (flair_lesion, enhancement, new_lesion): recipes, networks, transforms, inference, training,
pretraining on phantoms and evaluation."""
