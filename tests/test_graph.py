"""The pairing graph on its own: chains, reachability, next levels, completion steps and anchor holders."""

import re

import pytest

from brokenbind.errors import ConfigError
from brokenbind.graph import PairingGraph

TWO = PairingGraph({"support": ["pix", "zer"], "evaluation": ["fou", "pix"]}, ["pix"])
THREE = PairingGraph({"d1": ["a", "b"], "d2": ["b", "c"], "d3": ["c", "e"]})
FIVE = PairingGraph({"d1": ["a", "b"], "d2": ["b", "c"], "d3": ["c", "e"], "d4": ["e", "f"], "d5": ["f", "g"]})
# d1 branches to d2 and d3 (both through b); d4 is linked to nobody
BRANCHES = PairingGraph({"d1": ["a", "b"], "d2": ["b", "c"], "d3": ["b", "e"], "d4": ["x", "y"]})


def test_chains_are_shortest_paths_from_a_dataset_observing_the_target():
    assert TWO.chain("evaluation", "zer") == ["support", "evaluation"]
    assert TWO.chain("evaluation", "pix") == ["support", "evaluation"]  # another dataset observing it
    assert THREE.chain("d1", "e") == ["d3", "d2", "d1"]
    assert THREE.chain("d3", "a") == ["d1", "d2", "d3"]
    assert FIVE.chain("d1", "g") == ["d5", "d4", "d3", "d2", "d1"]
    assert BRANCHES.chain("d2", "e") == ["d3", "d2"]  # d2 and d3 share b directly
    assert BRANCHES.chain("d1", "y") == ["d1"]  # unreachable
    assert PairingGraph({"paired": ["fou", "zer"]}).chain("paired", "zer") == ["paired"]


def test_reachability_and_observed_together():
    assert TWO.reachable("evaluation") == {"fou", "pix", "zer"}
    assert FIVE.reachable("d5") == {"a", "b", "c", "e", "f", "g"}
    assert BRANCHES.reachable("d1") == {"a", "b", "c", "e"}
    assert BRANCHES.reachable("d4") == {"x", "y"}
    assert TWO.observed_together("pix", "zer") and not TWO.observed_together("fou", "zer")
    assert TWO.modalities() == {"fou", "pix", "zer"} and TWO.pivots == ("pix",) and THREE.pivots == ()
    assert BRANCHES.holders("b") == ["d1", "d2", "d3"] and BRANCHES.holders("b", "e") == ["d3"]


def test_next_level_maps_each_missing_modality_to_the_first_dataset_and_pivot_lending_it():
    assert TWO.next_level("evaluation", ["fou", "pix"]) == {"zer": ("support", "pix")}
    assert THREE.next_level("d1", ["a", "b"]) == {"c": ("d2", "b")}
    assert THREE.next_level("d1", ["a", "b", "c"]) == {"e": ("d3", "c")}
    assert THREE.next_level("d1", ["a", "b", "c", "e"]) == {}
    assert BRANCHES.next_level("d1", ["a", "b"]) == {"c": ("d2", "b"), "e": ("d3", "b")}
    assert BRANCHES.next_level("d4", ["x", "y"]) == {}
    assert PairingGraph({"d1": ["a"], "d2": ["a", "c"], "d3": ["a", "c", "e"]}).next_level("d1", ["a"]) == {
        "c": ("d2", "a"),
        "e": ("d3", "a"),
    }  # c from the first dataset lending it


def test_steps_complete_every_dataset_level_by_level():
    assert THREE.steps() == [
        ("d1", "b", "c"), ("d1", "c", "e"), ("d2", "b", "a"), ("d2", "c", "e"), ("d3", "c", "b"), ("d3", "b", "a"),
    ]  # fmt: skip
    assert FIVE.steps()[:4] == [("d1", "b", "c"), ("d1", "c", "e"), ("d1", "e", "f"), ("d1", "f", "g")]
    assert len(FIVE.steps()) == 5 * 4  # each of the 5 datasets reaches the 4 modalities it lacks
    assert BRANCHES.steps() == [
        ("d1", "b", "c"), ("d1", "b", "e"), ("d2", "b", "a"), ("d2", "b", "e"), ("d3", "b", "a"), ("d3", "b", "c"),
    ]  # fmt: skip


def test_several_shared_modalities_make_the_pivot_ambiguous():
    graph = PairingGraph({"d1": ["a", "b", "e"], "d2": ["a", "b", "c"]})
    message = "datasets 'd1' and 'd2' share several modalities ['a', 'b']: the pivot is ambiguous"
    with pytest.raises(ConfigError, match=re.escape(message)):
        graph.next_level("d1", ["a", "b", "e"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        graph.steps()


def test_the_anchor_holder_is_the_first_dataset_observing_pivot_and_target():
    assert TWO.anchor_holder("pix", "zer") == "support"
    assert (
        PairingGraph({"e": ["fou", "pix"], "s1": ["pix", "zer"], "s2": ["zer", "pix"]}).anchor_holder("pix", "zer")
        == "s1"
    )
    assert THREE.anchor_holder("b", "e") is None  # a chain of three: no dataset observes both
