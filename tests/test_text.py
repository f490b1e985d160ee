"""The wording helper of the printed summary lines."""

from efficientdet.utils.text import counted, first_few


def test_counted_is_singular_for_one_and_plural_with_thousands_otherwise():
    assert counted(1, "image") == "1 image"
    assert counted(0, "image") == "0 images"
    assert counted(1818, "training image") == "1,818 training images"
    assert counted(1, "box") == "1 box" and counted(2805, "box") == "2,805 boxes"
    assert counted(3, "class") == "3 classes"


def test_first_few_names_five_and_counts_the_rest():
    assert first_few(["a.jpg"]) == "a.jpg"
    assert first_few([f"{i}.jpg" for i in range(5)]) == "0.jpg, 1.jpg, 2.jpg, 3.jpg, 4.jpg"
    assert first_few([f"{i}.jpg" for i in range(8)]) == "0.jpg, 1.jpg, 2.jpg, 3.jpg, 4.jpg and 3 more"
