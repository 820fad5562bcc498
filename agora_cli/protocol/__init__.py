"""The AGORA protocol stages (arXiv 2507.21166), one module per stage; the loop composes them.

generate (Q-Group) -> solve (R-Group) -> verify (unanimous consensus) -> vote (TrueSkill)
-> select (Eq. 4, elite history) ; difficulty (Eq. 1) ; surprise (Eq. 2, FEM, strategy) ;
isolated (self-consistency baseline). Prompts live in prompts/*.jinja (agora_cli.protocol.prompts).
"""
