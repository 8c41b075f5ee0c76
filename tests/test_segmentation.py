from earlytag.data.segmentation import tags_to_words, word_spans, word_tags


def test_words_to_tags_and_back():
    words = ["同样", "，", "施力", "加速度"]
    chars, tags = word_tags(words)
    assert tags == ["B", "E", "S", "B", "E", "B", "M", "E"]
    assert tags_to_words(chars, tags) == words


def test_lenient_decoding():
    assert word_spans(["M", "E", "B", "B", "S", "M"]) == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
    assert word_spans([]) == []
