"""Tokenize, parse and evaluate GeneralPoints formulas exactly, without executing any text.

A formula is a string over ASCII digits and ``+ - * / ( )``. It is split into tokens with
:data:`TOKEN_PATTERN`, parsed by a small recursive-descent grammar (the usual precedence,
left-associative, no unary operators) into a tree, and evaluated in exact rationals
(:class:`fractions.Fraction`). Nothing here calls ``eval``/``exec``/``compile``: model text is
only ever matched against regular expressions and walked token by token.

Grammar::

    expression := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := NUMBER | "(" expression ")"

Evaluation *fails* (returns ``None``) where Python's ``eval`` of the same text would raise:
an unclosed ``(``, a trailing operator, an empty formula, a number written with a leading zero
(``07``), division by zero. Bounds keep it cheap on any input: it also fails beyond
:data:`MAX_NESTING` nested parentheses (Python's parser has a similar limit, about 200),
:data:`MAX_TOKENS` tokens or :data:`MAX_NUMBER_DIGITS`-digit numbers.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Callable, Sequence, Union

#: ASCII-only token pattern (``\\d`` would also match non-ASCII digits such as ``'٣'``).
TOKEN_PATTERN = re.compile(r"[0-9]+|[+\-*/()]")

#: Deepest parenthesis nesting the parser follows before giving up (evaluation fails).
MAX_NESTING = 64
#: Longest token list and longest number the parser accepts (keeps exact arithmetic cheap).
MAX_TOKENS = 256
MAX_NUMBER_DIGITS = 16

OPERATORS = ("+", "-", "*", "/")

#: A parsed formula: an ``int`` leaf or ``(operator, left, right)``.
Tree = Union[int, tuple]


class FormulaError(ValueError):
    """Raised by :func:`parse_tree` when tokens do not form one complete, bounded expression."""


def tokenize(formula: str) -> list[str]:
    """Return the tokens of ``formula`` (numbers and ``+-*/()``), skipping any other character.

    ``"".join(tokenize(f)) == f`` holds exactly when ``f`` contains no other character.
    """
    return TOKEN_PATTERN.findall(formula)


class _Parser:
    """Recursive-descent parser over a token list; see the module grammar.

    ``leaf(int)`` and ``combine(operator, left, right)`` build the result, so the same walk
    yields a tree or an exact value. Only parentheses recurse (depth <= MAX_NESTING); chains
    of operators are loops.
    """

    def __init__(self, tokens: Sequence[str], leaf: Callable, combine: Callable):
        self.tokens = tokens
        self.position = 0
        self.depth = 0
        self.leaf = leaf
        self.combine = combine

    def peek(self) -> str | None:
        if self.position < len(self.tokens):
            return self.tokens[self.position]
        return None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise FormulaError("unexpected end of formula")
        self.position += 1
        return token

    def expression(self):
        result = self.term()
        while self.peek() in ("+", "-"):
            operator = self.take()
            result = self.combine(operator, result, self.term())
        return result

    def term(self):
        result = self.factor()
        while self.peek() in ("*", "/"):
            operator = self.take()
            result = self.combine(operator, result, self.factor())
        return result

    def factor(self):
        token = self.take()
        if token == "(":
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise FormulaError("parentheses nested too deeply")
            result = self.expression()
            if self.take() != ")":
                raise FormulaError("expected ')'")
            self.depth -= 1
            return result
        if token.isascii() and token.isdigit():
            if token[0] == "0" and token.strip("0"):  # "07" is a SyntaxError; "00" is not
                raise FormulaError("number with a leading zero")
            return self.leaf(int(token))
        raise FormulaError(f"unexpected token {token!r}")

    def run(self):
        result = self.expression()
        if self.peek() is not None:
            raise FormulaError(f"unexpected token {self.peek()!r}")
        return result


def _check_length(tokens: Sequence[str]) -> None:
    if len(tokens) > MAX_TOKENS:
        raise FormulaError(f"more than {MAX_TOKENS} tokens")
    if any(len(token) > MAX_NUMBER_DIGITS for token in tokens):
        raise FormulaError(f"a number with more than {MAX_NUMBER_DIGITS} digits")


def parse_tree(tokens: Sequence[str]) -> Tree:
    """Parse ``tokens`` into a tree; raise :class:`FormulaError` if they are not one expression.

    Returns an ``int`` for a lone number, else ``(operator, left_tree, right_tree)``.
    """
    _check_length(tokens)
    return _Parser(tokens, int, lambda operator, a, b: (operator, a, b)).run()


def _apply(operator: str, a: Fraction, b: Fraction) -> Fraction:
    if operator == "+":
        return a + b
    if operator == "-":
        return a - b
    if operator == "*":
        return a * b
    return a / b  # ZeroDivisionError on b == 0


def evaluate(tokens: Sequence[str]) -> Fraction | None:
    """Return the exact value of the formula ``tokens``, or ``None`` if it fails to evaluate.

    Fails (``None``) on anything that is not one complete expression, on a leading-zero
    number, on nesting deeper than :data:`MAX_NESTING`, on more than :data:`MAX_TOKENS`
    tokens or a number longer than :data:`MAX_NUMBER_DIGITS` digits, and on division by zero.
    """
    try:
        _check_length(tokens)
        return _Parser(tokens, Fraction, _apply).run()
    except (FormulaError, ZeroDivisionError):
        return None
