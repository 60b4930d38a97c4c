from echo_lite.config import get_preset
from echo_lite.data.caption import MetadataCaptioner, ThinkerCaptioner
from echo_lite.data.world import Event, Scene, render_scene, sample_scene

SCENE = Scene("s", 12.0, (
    Event("tone", "C5 tone", 0.5, 1.5, {"pitch": "C5", "hz": 523.25}),
    Event("speech", "spoken seven", 3.0, 3.6, {"word": "seven"}),
    Event("melody", "A minor melody", 5.0, 7.0, {"key": "A minor", "bpm": 120, "notes": ["A4", "C5", "E5", "A4"]}),
    Event("noise", "noise burst", 10.2, 11.0, {"color": "white"}),
), 0)


def test_metadata_caption_has_the_three_views_and_the_timeline():
    cap = MetadataCaptioner()(SCENE)
    assert cap.speech == 'A synthetic voice says "seven".'
    assert cap.music == "an A minor melody at 120 bpm (A4 C5 E5 A4)."
    assert "one steady tone" in cap.description and "ends with the noise burst" in cap.description
    two = MetadataCaptioner()(Scene("m", 9.0, tuple(Event("melody", "C major melody", a, a + 1.0, {
        "key": "C major", "bpm": 100, "notes": ["C4"]}) for a in (1.0, 4.0)), 0))
    assert "two short melodies" in two.description and two.music.startswith("a C major melody")
    text = cap.simulation()
    assert text.startswith("Duration: 12.0 s\n")
    assert "- 0.5-1.5: C5 tone\n- 3.0-3.6: spoken seven\n- 5.0-7.0: A minor melody\n- 10.2-11.0: noise burst" in text
    silent = MetadataCaptioner()(Scene("q", 5.0, (Event("tone", "C5 tone", 1.0, 2.0, {"hz": 523.25}),), 0))
    assert silent.speech == "none" and silent.music == "none"


def test_real_source_captions_are_used_as_the_description():
    scene = Scene("m", 10.0, (Event("music", "C major music", 0.0, 10.0, {"key": "C major", "bpm": 96.0,
                                                                          "caption": "Soft guitar."}),), 0,
                  {"caption": "Soft guitar over rain."})
    cap = MetadataCaptioner()(scene)
    assert cap.description == "Soft guitar over rain." and "key C major, 96 bpm" in cap.music


def test_a_thinker_can_write_the_views(tiny_tokenizer, tiny_model):
    from echo_lite.model import LoadedModel

    lm = LoadedModel(tiny_model, tiny_tokenizer, get_preset("tiny"))
    scene = sample_scene(2, duration=5.0, kinds=["tone"], n_events=2)
    cap = ThinkerCaptioner(lm, max_new_tokens=6)(scene, render_scene(scene))
    assert all(isinstance(v, str) for v in (cap.description, cap.speech, cap.music))
    assert cap.timeline == tuple((e.onset, e.offset, e.label) for e in scene.events)  # from metadata
    assert cap.extra == {"captioner": "thinker"} and cap.duration == 5.0
