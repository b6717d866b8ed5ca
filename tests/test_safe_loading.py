"""zoo never unpickles what it loads: no pickle, cloudpickle, joblib or torch.load on artifacts."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}


def _sources():
    for folder in ("zoo", "benchmarks"):
        yield from (ROOT / folder).rglob("*.py")
    yield ROOT / "train.py"


def test_no_unpickling_anywhere_in_the_source():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n.split(".")[0] in FORBIDDEN_MODULES for n in names):
                    problems.append(f"{where}: imports {names}")
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                if not (isinstance(node.value, ast.Constant) and node.value.value is False):
                    problems.append(f"{where}: allow_pickle is not False")
            if isinstance(node, ast.Attribute) and node.attr == "load":
                base = node.value
                if isinstance(base, ast.Name) and base.id in {"torch", "pickle", "joblib"}:
                    problems.append(f"{where}: {base.id}.load")
    assert not problems, problems


def test_every_numpy_load_refuses_pickles():
    for path in _sources():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in {"np", "numpy"}
            ):
                keywords = {k.arg: k.value for k in node.keywords}
                value = keywords.get("allow_pickle")
                assert isinstance(value, ast.Constant) and value.value is False, (
                    f"{path}:{node.lineno}: np.load without allow_pickle=False"
                )
