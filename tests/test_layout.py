"""The package's shape (docs/STUDY.md section 7): no import circles between its modules, counting imports inside
functions too; one home per concept."""
import ast

from darl_utils.cache import PACKAGE


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside a function."""
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("darl_utils"):
                found |= {node.module.split(".")[1]} if "." in node.module else {a.name for a in node.names}
        graph[path.stem] = {m for m in found if (PACKAGE / f"{m}.py").exists()}
    return graph


def cycle_from(graph: dict, start: str) -> list[str] | None:
    stack = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [start]
            if nxt not in path:
                stack.append((nxt, path + [nxt]))
    return None


def test_no_module_imports_itself_back():
    graph = package_imports()
    assert {"pipeline", "dasa", "results", "tables", "figures", "verdicts", "cache"} <= set(graph)
    cycles = [c for m in sorted(graph) if (c := cycle_from(graph, m))]
    assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_finds_a_circle_when_there_is_one():
    assert cycle_from({"a": {"b"}, "b": {"c"}, "c": {"a"}}, "a") == ["a", "b", "c", "a"]
    assert cycle_from({"a": {"b"}, "b": set()}, "a") is None


def test_results_files_have_one_writer():
    """Only results.py opens results.jsonl for writing."""
    writers = [p.stem for p in PACKAGE.glob("*.py") if '"results.jsonl", "a"' in p.read_text()]
    assert writers == ["results"]


def test_one_module_talks_between_processes():
    """Only distributed.py imports torch.distributed or reads the launcher's RANK / WORLD_SIZE; training.py may
    still shard with torch.utils.data's DistributedSampler and wrap with DDP."""
    talkers = [p.stem for p in PACKAGE.glob("*.py")
               if any(s in p.read_text() for s in ("torch.distributed", '"RANK"', '"WORLD_SIZE"', '"LOCAL_RANK"'))]
    assert talkers == ["distributed"]


def test_the_readme_layout_names_every_module():
    layout = (PACKAGE.parent / "README.md").read_text().split("## Layout")[1].split("```")[1]
    named = set(layout.replace("·", " ").split())
    for module in sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"):
        assert module in named, f"{module} is missing from the README's layout"
