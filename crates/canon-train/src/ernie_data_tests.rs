use super::*;

/// A tiny standard library: a package with two modules and a top-level module.
pub(crate) fn tiny_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::create_dir_all(p.join("pkg")).unwrap();
    std::fs::create_dir_all(p.join("test")).unwrap();
    std::fs::write(p.join("pkg/__init__.py"), "\"\"\"The pkg package.\"\"\"\n").unwrap();
    std::fs::write(
        p.join("pkg/shapes.py"),
        r#""""Geometric shapes for drawing.

The Shape class is the base of Circle; use make_circle() to build one.
"""
import math
from . import util

class Shape:
    """A shape on the plane. Call area() to measure it."""
    def area(self):
        return 0.0

    def _hidden(self):
        pass

class Circle(Shape):
    def area(self):
        # uses math.pi and util.square to compute the area of a circle
        return math.pi * util.square(self.r)

def make_circle(r):
    return Circle(r)

def _private():
    pass
"#,
    )
    .unwrap();
    std::fs::write(
        p.join("pkg/util.py"),
        "def square(x):\n    '''Return x times x; see pkg.shapes.make_circle for a user.'''\n    return x * x\n",
    )
    .unwrap();
    std::fs::write(p.join("math.py"), "pi = 3.14\n# class Fake: not a class\n").unwrap();
    std::fs::write(p.join("test/test_x.py"), "def test_it():\n    pass\n").unwrap();
    dir
}

fn triple(kg: &KnowledgeGraph, h: &str, r: Relation, t: &str) -> bool {
    let (Some(h), Some(t)) = (kg.id(h), kg.id(t)) else {
        return false;
    };
    kg.triples
        .binary_search(&Triple { h, r: r as u32, t })
        .is_ok()
}

#[test]
fn graph_of_a_tiny_tree_has_the_expected_entities_and_relations() {
    let dir = tiny_tree();
    let files = stdlib_sources(dir.path()).unwrap();
    let mods: Vec<&str> = files.iter().map(|f| f.module.as_str()).collect();
    assert_eq!(mods, ["math", "pkg", "pkg.shapes", "pkg.util"]);
    let kg = KnowledgeGraph::build(&files);
    let mut names: Vec<&str> = kg.entities.iter().map(|e| e.name.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "math",
            "pkg",
            "pkg.shapes",
            "pkg.shapes.Circle",
            "pkg.shapes.Circle.area",
            "pkg.shapes.Shape",
            "pkg.shapes.Shape.area",
            "pkg.shapes.make_circle",
            "pkg.util",
            "pkg.util.square",
        ]
    );
    use Relation::*;
    let want = [
        ("pkg.shapes", SubmoduleOf, "pkg"),
        ("pkg.util", SubmoduleOf, "pkg"),
        ("pkg.shapes", Imports, "math"),
        ("pkg.shapes", Imports, "pkg.util"),
        ("pkg.shapes.Shape", DefinedIn, "pkg.shapes"),
        ("pkg.shapes.Circle", DefinedIn, "pkg.shapes"),
        ("pkg.shapes.make_circle", DefinedIn, "pkg.shapes"),
        ("pkg.util.square", DefinedIn, "pkg.util"),
        ("pkg.shapes.Shape.area", MethodOf, "pkg.shapes.Shape"),
        ("pkg.shapes.Circle.area", MethodOf, "pkg.shapes.Circle"),
        ("pkg.shapes.Circle", SubclassOf, "pkg.shapes.Shape"),
        ("pkg.shapes.Circle.area", Calls, "pkg.util.square"),
        ("pkg.shapes.make_circle", Calls, "pkg.shapes.Circle"),
    ];
    for (h, r, t) in want {
        assert!(triple(&kg, h, r, t), "missing ({h}, {}, {t})", r.name());
    }
    assert_eq!(kg.triples.len(), want.len(), "{:?}", kg.triples);
    assert_eq!(kg.count(EntityKind::Module), 4);
    assert_eq!(kg.count(EntityKind::Class), 2);
    assert_eq!(kg.count(EntityKind::Function), 4);
    // Deterministic: a second build is identical.
    let again = KnowledgeGraph::build(&files);
    assert_eq!(again.entities, kg.entities);
    assert_eq!(again.triples, kg.triples);
}

#[test]
fn text_units_and_exact_match_alignment() {
    let dir = tiny_tree();
    let files = stdlib_sources(dir.path()).unwrap();
    let kg = KnowledgeGraph::build(&files);
    let units = text_units(&files);
    let texts: Vec<&str> = units.iter().map(|u| u.text.as_str()).collect();
    assert!(
        texts.contains(&"The Shape class is the base of Circle; use make_circle() to build one.")
    );
    assert!(texts.contains(&"uses math.pi and util.square to compute the area of a circle"));
    // "Geometric shapes for drawing." has 5 words: dropped.
    assert!(!texts.iter().any(|t| t.starts_with("Geometric")));
    let linker = Linker::new(&kg);
    let link = |text: &str, module: &str| -> Vec<(String, String)> {
        let w = words(text);
        linker
            .link(&w, module)
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                e.map(|e| (w[i].text.clone(), kg.entities[e as usize].name.clone()))
            })
            .collect()
    };
    // Capitalised class names not at a sentence start, `name(`, dotted names through aliases.
    assert_eq!(
        link(
            "The Shape class is the base of Circle; use make_circle() to build one.",
            "pkg.shapes"
        ),
        [
            ("Shape".into(), "pkg.shapes.Shape".into()),
            ("Circle".into(), "pkg.shapes.Circle".into()),
            ("make_circle".into(), "pkg.shapes.make_circle".into())
        ]
    );
    // `math.pi` is no entity, but its prefix `math` is a module; `util.square` resolves through
    // the import alias; the mention is aligned to its first word.
    let w = words("uses math.pi and util.square to compute");
    let l = linker.link(&w, "pkg.shapes");
    assert_eq!(l[1], kg.id("math"));
    assert_eq!(l[5], kg.id("pkg.util.square"));
    assert!(l[6..].iter().all(Option::is_none), "{l:?}");
    // Qualified names anywhere; a plain word that is a function name only with `(`.
    assert_eq!(
        link("see pkg.shapes.make_circle for square x", "pkg.util"),
        [("pkg".into(), "pkg.shapes.make_circle".into())]
    );
    assert_eq!(
        link("returns square(x) for x", "pkg.util"),
        [("square".into(), "pkg.util.square".into())]
    );
    // A sentence-initial capitalised word is not taken for a class.
    assert!(link("Shape of things", "pkg.shapes").is_empty());
}

#[test]
fn words_split_identifiers_digits_and_symbols() {
    let w: Vec<String> = words("a.b_c(12) é!").into_iter().map(|w| w.text).collect();
    assert_eq!(w, ["a", ".", "b_c", "(", "12", ")", "é", "!"]);
}

#[test]
fn an_empty_tree_is_an_error_naming_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let err = stdlib_sources(dir.path()).unwrap_err().to_string();
    assert!(err.contains(&dir.path().display().to_string()), "{err}");
}
