import pytest

from notagen_trt.errors import NotaGenError
from notagen_trt.runtime.prompts import Prompt, resolve_prompt, valid_prompts


def test_the_112_published_combinations_ship_with_the_package():
    prompts = valid_prompts()
    assert len(prompts) == 112 and len(set(prompts)) == 112
    assert Prompt("Baroque", "Bach, Johann Sebastian", "Choral") in prompts


def test_valid_prompt_gives_three_lines():
    p = resolve_prompt("Romantic", "Chopin, Frederic", "Keyboard")
    assert p.lines() == ["%Romantic\n", "%Chopin, Frederic\n", "%Keyboard\n"]


def test_no_prompt_means_unconditional():
    assert resolve_prompt(None, None, None) is None


@pytest.mark.parametrize(
    "args, message",
    [
        (("Barouqe", "Bach, Johann Sebastian", "Choral"), "did you mean 'Baroque'"),
        (("Baroque", "Bach, Johan Sebastian", "Choral"), "did you mean 'Bach, Johann Sebastian'"),
        (("Baroque", "Bach, Johann Sebastian", "Chorale"), "did you mean 'Choral'"),
        (("Classical", "Bach, Johann Sebastian", "Choral"), "not in period 'Classical'; use --period 'Baroque'"),
        (("Baroque", None, None), "give all three"),
    ],
)
def test_typos_get_did_you_mean(args, message):
    with pytest.raises(NotaGenError, match=message):
        resolve_prompt(*args)
