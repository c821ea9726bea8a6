"""Print command N (1 = main job, 2 = tests) of the README's Quick start block, the same way
../shared/tools/new-user-check reads it, so CI runs exactly what a new user runs."""
import re
import sys

text = open("README.md").read() + "\n## end"
section = re.search(r"^##+\s*Quick ?start.*?$(.*?)(?=^##\s)", text, re.S | re.M | re.I)
block = re.search(r"```(?:bash|sh|console|shell)?\n(.*?)```", section.group(1), re.S)
cmds, cur = [], ""
for line in block.group(1).splitlines():
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    line = line[2:] if line.startswith("$ ") else line
    cur += line[:-1] + " " if line.endswith("\\") else line
    if not line.endswith("\\"):
        cmds.append(cur)
        cur = ""
assert len(cmds) == 2, f"README Quick start must hold exactly two commands, found {cmds}"
print(cmds[int(sys.argv[1]) - 1])
