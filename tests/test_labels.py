import pytest

from mri44.labels import UNKNOWN, parse_label


@pytest.mark.parametrize(
    ("name", "tumor", "contrast"),
    [
        ("Astrocitoma T1C+", "Astrocitoma", "T1C+"),
        ("Astrocitoma T1", "Astrocitoma", "T1"),
        ("Meduloblastoma T2", "Meduloblastoma", "T2"),
        ("_NORMAL T2", "Normal", "T2"),
        ("_NORMAL T1", "Normal", "T1"),
        ("Glioblastoma t1c+", "Glioblastoma", "T1C+"),
        ("Pineal cyst FLAIR", "Pineal cyst", "FLAIR"),
    ],
)
def test_parse_known_contrasts(name: str, tumor: str, contrast: str) -> None:
    label = parse_label(name)
    assert (label.name, label.tumor_type, label.contrast) == (name, tumor, contrast)


@pytest.mark.parametrize(
    ("name", "tumor"), [("Cyst", "Cyst"), ("_NORMAL", "Normal"), ("T1", "T1"), ("Tumor T3", "Tumor T3")]
)
def test_names_without_known_contrast_still_parse(name: str, tumor: str) -> None:
    label = parse_label(name)
    assert label.tumor_type == tumor
    assert label.contrast == UNKNOWN
