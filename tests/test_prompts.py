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
        (("Romantic", "chopin", "Keyboard"), "did you mean 'Chopin, Frederic'"),  # a part of the name
        (("Baroque", "Qqqq", "Choral"), "valid: .*'Bach, Johann Sebastian'"),  # quoted: the names hold commas
        (("Classical", "Bach, Johann Sebastian", "Choral"), "not in period 'Classical'; use --period 'Baroque'"),
        (("Baroque", None, None), "give all three"),
    ],
)
def test_typos_get_did_you_mean(args, message):
    with pytest.raises(NotaGenError, match=message):
        resolve_prompt(*args)


def test_case_and_spacing_do_not_matter():
    assert resolve_prompt("baroque", "bach,  JOHANN sebastian", "CHORAL") == Prompt(
        "Baroque", "Bach, Johann Sebastian", "Choral")
    with pytest.raises(NotaGenError, match="not in period 'Classical'; use --period 'Baroque'"):
        resolve_prompt("classical", "bach, johann sebastian", "choral")


def test_prompts_command_lists_every_combination(capsys):
    import json

    from notagen_trt.cli import main

    assert main(["prompts", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {Prompt(**p) for p in listed} == set(valid_prompts())
    assert main(["prompts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    bach = next(line for line in lines if '"Bach, Johann Sebastian"' in line)  # quoted: the name has a comma
    assert bach.split() == ["Baroque", '"Bach,', "Johann", 'Sebastian"', "Chamber,", "Choral,", "Keyboard,",
                            "Orchestral,", "Vocal-Orchestral"]
    assert "112 combinations" in lines[-1]
