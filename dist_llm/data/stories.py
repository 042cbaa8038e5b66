"""The default built-in corpus: simple English stories, generated at run time from a small grammar.

A newcomer's first run should show a model learning language in a few CPU minutes, without a download.
Real prose (the stdlib docs, Shakespeare) is too varied for a ~1M-parameter model trained for a couple of
minutes: its samples stay noise. These stories use a few hundred words in a few dozen sentence shapes,
like TinyStories but written by a grammar: characters, places, things, a problem, a friend who helps,
dialogue and an ending. A small model picks up spelling, grammar, punctuation and the story shape
within a few hundred steps, and keeps a name or an object consistent over a story after a few more.

Deterministic: one `random.Random(seed)` drives every choice, so a seed gives the same text on every
machine and Python version (only `random()`, `randrange()` and `choice()` are used, whose results are
stable across versions for a given seed). Generating the default 4,000 stories takes ~0.1 s; the text is
written once into the cache directory, since the data pipeline works on files.

    python -m dist_llm.data.stories --cache-dir data_cache   # prints the path of the .txt
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from dist_llm.data import DOCUMENT_SEPARATOR as SEPARATOR
from dist_llm.utils.atomic_io import atomic_write

STORIES_VERSION = 1  # bump when the grammar changes: the cached file name (and so the token cache) changes
DEFAULT_NUM_STORIES = 4000
DEFAULT_SEED = 0


def _words(text: str) -> list[str]:
    return text.split()


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("x", "s", "sh", "ch")) else "s")


GIRLS = _words("Lily Mia Anna Lucy Emma Zoe Sue Kim Rose Amy Ella Sara Nina Ruby Grace Mila Ivy Jane Lena")
BOYS = _words("Tom Ben Sam Max Jack Leo Tim Dan Finn Noah Jake Luke Owen Adam Paul Ray Eli Joe Hugo Carl")
ANIMALS = _words("cat dog bird rabbit frog duck fox bear mouse owl horse pig lamb puppy kitten turtle goat "
                 "cow squirrel hen")
TRAITS = _words("little kind happy shy brave curious small clever silly gentle friendly busy quiet funny "
                "tiny")
PLACES = ["the park", "the forest", "the garden", "the beach", "the farm", "the river", "the hill",
          "the lake", "the meadow", "the town", "the market", "the field", "the school", "the woods",
          "the zoo", "the pond"]
HOMES = ["in a small house", "in a big red house", "on a quiet farm", "near a tall tree", "by the sea",
         "in a little town", "near the woods", "at the end of a long road", "in a busy city",
         "on top of a hill"]
COLOURS = _words("red blue green yellow pink purple orange white shiny golden brown soft")
THINGS = _words("ball kite box hat boat car drum book cup flower stone shell key balloon toy bell sock "
                "scarf")
FOODS = ["an apple", "a cake", "some cookies", "a sandwich", "some berries", "a pie", "some bread",
         "a carrot", "some soup", "a banana", "some cheese", "a pear"]
LIKES = ["play outside", "run and jump", "sing songs", "draw pictures", "read books", "look at the stars",
         "dance", "build things", "climb trees", "help other people", "splash in puddles", "bake cakes",
         "swim", "play games", "pick flowers", "tell stories"]
WHEN = ["One day", "One sunny morning", "One rainy afternoon", "One cold morning", "Later that day",
        "The next day", "One warm evening", "After lunch", "One windy day", "On Sunday"]
SPOTS = ["under a bush", "behind a big rock", "next to the path", "in the tall grass", "near the water",
         "under a tree", "on a bench", "in the sand", "behind the fence", "in a hole"]
FEELINGS_BAD = _words("sad scared worried upset lonely tired")
FEELINGS_GOOD = _words("happy glad proud excited")
MORALS = ["it is good to share", "friends help each other", "it is good to be kind",
          "being brave is important", "it is good to say sorry", "you should always tell the truth",
          "it is fun to try new things", "you should be careful", "it is good to listen",
          "you should never give up"]


class _Story:
    """One story's cast and the sentence shapes that use it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.hero, self.he, self.his = self.person()
        self.friend, self.fhe, _ = self.person(avoid=self.hero)
        self.animal = rng.choice(ANIMALS)
        self.thing = f"{rng.choice(COLOURS)} {rng.choice(THINGS)}"
        self.place = rng.choice(PLACES)

    def person(self, avoid: str = "") -> tuple[str, str, str]:
        girl = self.rng.random() < 0.5
        name = self.rng.choice([n for n in (GIRLS if girl else BOYS) if n != avoid])
        return (name, "she", "her") if girl else (name, "he", "his")

    def pick(self, *options: str) -> str:
        return self.rng.choice(options)

    def opening(self) -> list[str]:
        r, h = self.rng, self.hero
        kind = "girl" if self.he == "she" else "boy"
        first = self.pick(f"Once upon a time, there was a {r.choice(TRAITS)} {kind} named {h}.",
                          f"There once was a {r.choice(TRAITS)} {kind} called {h}.",
                          f"{h} was a {r.choice(TRAITS)} {kind} who lived {r.choice(HOMES)}.")
        return [first, f"{self.he.capitalize()} liked to {r.choice(LIKES)}.",
                self.pick(f"{h} had a friend named {self.friend}.",
                          f"{h} had a pet {self.animal}.",
                          f"{self.his.capitalize()} best friend was {self.friend}.")]

    def lost_thing(self) -> list[str]:
        h, he, t = self.hero, self.he, self.thing
        return [f"{self.rng.choice(WHEN)}, {h} went to {self.place} with {self.his} {t}.",
                f"{he.capitalize()} played with the {t} all morning.",
                self.pick(f"But then the wind blew the {t} away.", f"But then {he} lost the {t}."),
                f"{h} looked everywhere, but {he} could not find it.",
                f"{h} felt {self.rng.choice(FEELINGS_BAD)}.",
                f"\"Where is my {t}?\" {he} asked.",
                f"Then {self.friend} came to help.",
                f"\"Don't worry, {h}. I will help you look,\" said {self.friend}.",
                f"They found the {t} {self.rng.choice(SPOTS)}.",
                f"\"Thank you, {self.friend}!\" said {h}. {he.capitalize()} was very {self.good()}."]

    def new_friend(self) -> list[str]:
        h, he, a = self.hero, self.he, self.animal
        return [f"{self.rng.choice(WHEN)}, {h} was walking near {self.place}.",
                f"{he.capitalize()} saw a {self.rng.choice(TRAITS)} {a} {self.rng.choice(SPOTS)}.",
                f"The {a} looked {self.rng.choice(FEELINGS_BAD)}.",
                f"\"Hello, little {a}. Why are you {self.rng.choice(FEELINGS_BAD)}?\" asked {h}.",
                self.pick(f"\"I am hungry,\" said the {a}.", f"\"I have no friends,\" said the {a}."),
                f"{h} gave the {a} {self.rng.choice(FOODS)} and sat down next to it.",
                f"The {a} smiled. \"Thank you, {h}. You are very kind.\"",
                f"{h} and the {a} played together until the sun went down."]

    def sharing(self) -> list[str]:
        h, he, f, fhe, food = self.hero, self.he, self.friend, self.fhe, self.rng.choice(FOODS)
        return [f"{self.rng.choice(WHEN)}, {h} had {food}.",
                f"{f} saw it and said, \"Can I have some, please?\"",
                f"{h} did not want to share. \"No, it is mine!\" {he} said.",
                f"{f} was {self.rng.choice(FEELINGS_BAD)} and walked away.",
                f"{h} thought about it for a long time. {he.capitalize()} did not feel good.",
                f"So {he} ran to {f} and said, \"I am sorry. Let's share.\"",
                f"They ate {food} together, and {fhe} smiled."]

    def adventure(self) -> list[str]:
        h, he, f = self.hero, self.he, self.friend
        return [f"{self.rng.choice(WHEN)}, {h} and {f} went to {self.place}.",
                f"\"Let's go and see what is there,\" said {f}.",
                f"They walked and walked until they saw a big {self.rng.choice(COLOURS)} door.",
                f"{h} was {self.rng.choice(FEELINGS_BAD)}, but {he} was also {self.good()}.",
                f"\"Are you ready?\" asked {f}. \"Yes!\" said {h}.",
                f"They opened the door and found a room full of {_plural(self.rng.choice(THINGS))}.",
                "They played there all day, and then they went home for dinner."]

    def baking(self) -> list[str]:
        h, he, f, food = self.hero, self.he, self.friend, self.rng.choice(["a cake", "a pie", "some cookies"])
        return [f"{self.rng.choice(WHEN)}, {h} wanted to make {food} for {f}.",
                f"{he.capitalize()} put flour, milk and {self.rng.choice(['eggs', 'sugar', 'butter'])} in a "
                f"big bowl.",
                self.pick(f"But {he} spilled the milk on the floor.", f"But {he} made a big mess."),
                f"\"Oh no!\" said {h}. {he.capitalize()} felt {self.rng.choice(FEELINGS_BAD)}.",
                f"{self.his.capitalize()} mom came in and said, \"It is okay. Let's try again.\"",
                f"This time, {h} was very careful. The {food.split()[-1]} smelled good.",
                f"{f} came to visit, and they ate it together. \"Yum!\" said {f}."]

    def storm(self) -> list[str]:
        h, he, a = self.hero, self.he, self.animal
        return [f"{self.rng.choice(WHEN)}, {h} was at {self.place} with {self.his} {a}.",
                "Big dark clouds came, and it began to rain.",
                f"The {a} was {self.rng.choice(FEELINGS_BAD)} and ran away {self.rng.choice(SPOTS)}.",
                f"\"Come back!\" called {h}, but the {a} did not come.",
                f"{h} was brave. {he.capitalize()} walked into the rain to find the {a}.",
                f"At last {he} found it {self.rng.choice(SPOTS)}, wet and cold.",
                f"{h} held the {a} close and they went home. It was warm and dry inside."]

    def good(self) -> str:
        return self.rng.choice(FEELINGS_GOOD)

    def ending(self) -> list[str]:
        h = self.hero
        return [self.pick(f"From that day on, {h} and {self.friend} were best friends.",
                          f"{h} learned that {self.rng.choice(MORALS)}.",
                          f"That night, {h} went to bed with a big smile.",
                          f"It was the best day ever, and {h} was {self.good()}.")]


def story(rng: random.Random) -> str:
    """One story: an opening, one of six plots, an ending; a paragraph each."""
    s = _Story(rng)
    plot = rng.choice([s.lost_thing, s.new_friend, s.sharing, s.adventure, s.baking, s.storm])
    return "\n\n".join(" ".join(part) for part in (s.opening(), plot(), s.ending()))


def generate_stories(num_stories: int = DEFAULT_NUM_STORIES, seed: int = DEFAULT_SEED) -> list[str]:
    """`num_stories` stories, the same for the same seed everywhere."""
    rng = random.Random(seed)
    return [story(rng) for _ in range(num_stories)]


def stories_corpus_path(cache_dir: str | Path, num_stories: int = DEFAULT_NUM_STORIES,
                        seed: int = DEFAULT_SEED) -> Path:
    """Path of the stories corpus (.txt, one story per document, each followed by a separator line),
    generated into cache_dir on first use."""
    path = Path(cache_dir) / f"stories_v{STORIES_VERSION}_{num_stories}_seed{seed}.txt"
    if path.exists():  # reused, not rewritten: a new mtime would invalidate the token cache
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{s}\n{SEPARATOR}\n" for s in generate_stories(num_stories, seed))
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline="\n"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dist_llm.data.stories",
                                     description="Generate the built-in stories corpus and print its path.")
    parser.add_argument("--cache-dir", default="data_cache")
    parser.add_argument("--num-stories", type=int, default=DEFAULT_NUM_STORIES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    print(stories_corpus_path(args.cache_dir, args.num_stories, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
