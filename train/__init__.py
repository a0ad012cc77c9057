"""Train stage: fine-tune ResNet-18 on a folder-per-class image set (`python -m train --help`)."""
