import json

import pytest

from lvdm.curation.filter import filter_dataset, parse_conditions
from lvdm.curation.stats import dataset_stats
from lvdm.data.schema import read_manifest, read_rejects
from lvdm.data.shards import read_shard, write_shards
from lvdm.data.sample_media import encode_image, encode_video, frames

# (key, motion, ocr_area, duplicate_of, width, height, duration)
FIELDS = [
    ("a", 0.9, 0.00, None, 32, 24, 2.0),
    ("b", 0.2, 0.00, None, 32, 24, 2.0),   # low motion
    ("c", 0.8, 0.10, None, 64, 48, 1.0),   # text on screen
    ("d", 0.7, 0.01, "a", 32, 24, 2.0),    # a duplicate
    ("e", None, 0.00, None, 16, 16, 0.0),  # never scored (an image)
    ("f", 0.6, 0.01, "", 32, 24, 4.0),     # duplicate_of empty: not a duplicate
]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("scored") / "ds"
    video = encode_video(frames(4, 16, 16), "mp4")
    samples = []
    for key, motion, ocr, dup, width, height, duration in FIELDS:
        meta = {"kind": "image" if key == "e" else "video", "codec": "png" if key == "e" else "h264",
                "width": width, "height": height, "duration": duration, "fps": 0 if key == "e" else 8,
                "ocr_area": ocr, "tags": ["x"]}
        if motion is not None:
            meta["motion"] = motion
        if dup is not None:
            meta["duplicate_of"] = dup
        media = {"png": encode_image(frames(1, 16, 16)[0], "png")} if key == "e" else {"mp4": video}
        samples.append({"key": key, **media, "txt": f"caption {key}", "json": meta})
    write_shards(samples[:4], str(root / "shard-%06d.tar"))
    write_shards(samples[4:], str(root / "other-%06d.tar"))
    from lvdm.data.schema import manifest_row, write_manifest

    write_manifest([manifest_row(s["key"], "shard-000000.tar" if i < 4 else "other-000000.tar", s["json"])
                    for i, s in enumerate(samples)], root / "manifest.parquet")
    return root


def test_conditions_follow_the_grammar():
    conditions = parse_conditions("motion > 0.5 and ocr_area < 0.02 and not duplicate_of")
    assert [c.text for c in conditions] == ["motion > 0.5", "ocr_area < 0.02", "not duplicate_of"]
    (c,) = parse_conditions("width * height >= 32 * 24 and 0 < duration <= 2 or codec in ('png', 'vp9')")
    assert c({"width": 32, "height": 24, "duration": 2.0}) and c({"codec": "png"})
    assert not c({"width": 32, "height": 24, "duration": 0}) and not c({})
    negated, by_zero = parse_conditions("-motion < -0.5 and motion / 0 != 1")
    assert negated({"motion": 0.6}) and not negated({"motion": 0.4}) and not negated({})
    assert by_zero({"motion": 0.6})  # x / 0 is None, and None != 1
    assert parse_conditions("not duplicate_of")[0]({}) and not parse_conditions("codec == 3")[0]({"codec": "h264"})
    assert not parse_conditions("codec > 3")[0]({"codec": "h264"})  # a type clash is false, not a crash


@pytest.mark.parametrize("expression, refused", [
    ("__import__('os').system('true')", "Call"),
    ("motion.real > 1", "Attribute"),
    ("tags[0] == 'x'", "Subscript"),
    ("(lambda: 1)()", "Call"),
    ("2 ** 1000000", "Pow"),
    ("[x for x in tags]", "ListComp"),
    ("codec in (motion, 1)", "constants only"),
    ("motion >", "not valid"),
    ("motion := 1", "not valid"),
])
def test_anything_else_is_refused(expression, refused):
    with pytest.raises(ValueError, match=refused):
        parse_conditions(expression)


def test_filter_keeps_and_reports(scored, tmp_path, capsys):
    summary = filter_dataset(str(scored), str(tmp_path / "kept"),
                             "motion > 0.5 and ocr_area < 0.02 and not duplicate_of", workers=0)
    assert (summary["inputs"], summary["kept"], summary["removed"]) == (6, 2, 4)
    assert summary["conditions"] == [
        {"condition": "motion > 0.5", "failed": 2, "removed": 2},      # b, e
        {"condition": "ocr_area < 0.02", "failed": 1, "removed": 1},   # c
        {"condition": "not duplicate_of", "failed": 1, "removed": 1},  # d
    ]
    assert json.loads((tmp_path / "kept" / "filter_report.json").read_text())["conditions"] == summary["conditions"]
    printed = capsys.readouterr().out
    assert "kept 2 of 6 samples" in printed and "ocr_area < 0.02" in printed
    assert sorted(read_manifest(tmp_path / "kept")["key"]) == ["a", "f"]
    assert dict(read_rejects(tmp_path / "kept")) == {"b": "filtered: motion > 0.5", "e": "filtered: motion > 0.5",
                                                    "c": "filtered: ocr_area < 0.02", "d": "filtered: not duplicate_of"}
    originals = {s["__key__"]: s for shard in scored.glob("*.tar") for s in read_shard(shard)}
    for shard in (tmp_path / "kept").glob("*.tar"):
        for sample in read_shard(shard):
            assert sample == originals[sample["__key__"]]  # copied byte for byte
    assert sorted(p.name for p in (tmp_path / "kept").glob("*.tar")) == ["other-000000.tar", "shard-000000.tar"]


def test_filter_refuses_code_before_reading(scored, tmp_path):
    with pytest.raises(ValueError, match="Call is not allowed"):
        filter_dataset(str(scored), str(tmp_path / "x"), "open('/etc/passwd')", workers=0)
    assert not (tmp_path / "x").exists()


def test_filter_counts_an_unreadable_sample(tmp_path):
    video = encode_video(frames(4, 16, 16), "mp4")
    write_shards([{"key": "ok", "mp4": video, "txt": "", "json": {"motion": 1}},
                  {"key": "bad", "mp4": video, "txt": "", "json": b"{broken"}], str(tmp_path / "in" / "s-%06d.tar"))
    summary = filter_dataset(str(tmp_path / "in"), str(tmp_path / "out"), ["motion > 0"], workers=0)
    assert (summary["kept"], summary["unreadable"]) == (1, 1)
    assert read_rejects(tmp_path / "out")[0][0] == "bad"


def test_stats_table_json_and_plots(scored, tmp_path, capsys):
    stats = dataset_stats(str(scored), str(tmp_path / "stats"))
    assert stats["samples"] == 6 and stats["shards"] == 2
    fields = stats["fields"]
    assert list(fields)[:4] == ["duration", "fps", "width", "height"]
    assert fields["motion"]["count"] == 5 and fields["motion"]["max"] == 0.9 and fields["motion"]["min"] == 0.2
    assert fields["duration"]["p50"] == 2.0 and fields["width"]["mean"] == pytest.approx(208 / 6)
    assert stats["counts"]["kind"] == {"video": 5, "image": 1}
    assert stats["counts"]["resolution"] == {"32x24": 4, "64x48": 1, "16x16": 1}
    assert stats["total_hours"] == pytest.approx(11 / 3600)
    names = sorted(p.split("/")[-1] for p in stats["plots"])
    assert "hist_motion.png" in names and "hist_duration.png" in names and "resolution.png" in names
    assert all((tmp_path / "stats" / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["fields"]["motion"]["count"] == 5
    printed = capsys.readouterr().out
    assert "6 samples in 2 shards" in printed and "motion" in printed


def test_cli_filter_and_stats(scored, tmp_path, capsys):
    from lvdm.cli import main

    main(["data", "filter", "--source", str(scored), "--out", str(tmp_path / "k"), "--keep", "duration >= 2",
          "--workers", "0"])
    main(["data", "stats", "--source", str(tmp_path / "k"), "--plots", "false"])
    printed = capsys.readouterr().out
    assert "kept 4 of 6 samples" in printed and "4 samples in 2 shards" in printed


def test_a_misspelt_field_fails_before_anything_is_written_naming_the_closest(scored, tmp_path):
    with pytest.raises(ValueError, match=r"unknown field 'motoin' \(did you mean 'motion'\?\); the dataset's fields: "):
        filter_dataset(str(scored), str(tmp_path / "x"), "motoin > 0.5", workers=0)
    with pytest.raises(ValueError, match=r"unknown field 'dupliate_of' \(did you mean 'duplicate_of'\?\), 'zzz'"):
        filter_dataset(str(scored), str(tmp_path / "x"), ["not dupliate_of", "zzz > 1"], workers=0)
    assert not (tmp_path / "x").exists()
    # a list field only in the json (not a manifest column) is known
    assert filter_dataset(str(scored), str(tmp_path / "t"), "tags != None", workers=0)["kept"] == 6


def test_a_filter_that_keeps_nothing_warns_naming_the_condition(scored, tmp_path, capsys):
    summary = filter_dataset(str(scored), str(tmp_path / "k"), "width > 0 and motion > 5", workers=0)
    assert summary["kept"] == 0
    err = capsys.readouterr().err
    assert "warning: the filter kept none of the 6 samples; 'motion > 5' removed the most (6)" in err


def test_the_readme_filter_keeps_images(scored, tmp_path):
    summary = filter_dataset(str(scored), str(tmp_path / "k"),
                             "(motion > 0.5 or kind == 'image') and ocr_area < 0.02 and not duplicate_of", workers=0)
    assert sorted(read_manifest(tmp_path / "k")["key"]) == ["a", "e", "f"]  # e is the image
    assert summary["kept"] == 3


@pytest.mark.parametrize("expression", ["'a' * 999999999 * 999999999", "(1, 2) * 999999999", "'%999999999d' % 1",
                                        "codec == 'a' * 3"])
def test_arithmetic_on_text_is_refused(expression):
    with pytest.raises(ValueError, match="arithmetic on text or tuples"):
        parse_conditions(expression)


def test_arithmetic_on_a_text_field_is_none_not_a_gigabyte():
    (repeat,), (negate,) = parse_conditions("codec * 999999999 != 1"), parse_conditions("-codec < 0")
    assert repeat({"codec": "h264"})  # None != 1
    assert not negate({"codec": "h264"})  # a text field negated is None, not a TypeError
