import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_import_zoo_reaches_every_subpackage_on_first_use():
    code = (
        "import sys, zoo\n"
        "assert 'zoo.models' not in sys.modules and 'zoo.training' not in sys.modules\n"
        "assert 'resnet18' in zoo.models.names('resnet*')\n"
        "assert callable(zoo.layers.conv.conv) and callable(zoo.load)\n"
        "try:\n"
        "    zoo.modles\n"
        "except AttributeError as error:\n"
        "    assert \"no attribute 'modles'\" in str(error)\n"
        "else:\n"
        "    raise SystemExit('a misspelt attribute was found')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
