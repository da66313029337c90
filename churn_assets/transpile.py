"""DuckDB SQL -> Spark SQL with SQLGlot: the transformation SQL is written once (in DuckDB's
dialect, which the default engine runs as is) and the Spark engine runs its transpilation,
made at run time from the same text, so a change to the SQL reaches both engines.

SQLGlot maps the functions the two dialects share under other names (``arg_min`` ->
``min_by``, ``date_diff('day', a, b)``, ``struct_pack`` -> ``struct``, ``trunc(x)::INTEGER``);
the rewrites below cover what it does not: the project's own macro ``pseudonym``,
``epoch_us`` (-> ``unix_micros``), ``HUGEINT`` (-> ``DECIMAL(38, 0)``),
``try_strptime`` (-> ``try_to_timestamp``, the format translated), ``md5_number`` (the
holdout and sample rules of the model; see ``_md5_number``) and ``date_diff`` in months,
quarters or years (DuckDB counts boundaries crossed, Spark whole periods elapsed). Parameters (``$as_of``,
``?``) become literals, or an expression where one is given (a secret must never be a literal:
Spark shows a plan's literals in its UI and logs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime


class TranspileError(ValueError):
    """SQL the Spark engine cannot run; the message names the construct."""


def _literal(value):
    from sqlglot import exp

    if isinstance(value, exp.Expression):  # bound to an expression (a column), not a value
        return value
    if isinstance(value, datetime):
        return exp.cast(exp.Literal.string(value.strftime("%Y-%m-%d %H:%M:%S")), exp.DataType.build("TIMESTAMP"))
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    return exp.Literal.number(value)


def duckdb_to_spark(
    sql: str, named: Mapping[str, object] | None = None, positional: Sequence[object] = (), pretty: bool = False
) -> str:
    """``sql`` (DuckDB) as Spark SQL, with ``$name`` and ``?`` parameters bound as literals."""
    import sqlglot
    from sqlglot import exp

    named = dict(named or {})
    queue = list(positional)

    def bind(node):
        if isinstance(node, exp.Parameter) or (isinstance(node, exp.Placeholder) and node.args.get("this")):
            if node.name not in named:
                raise TranspileError(f"no value for the parameter ${node.name}")
            return _literal(named[node.name])
        if isinstance(node, exp.Placeholder):
            if not queue:
                raise TranspileError("more ? parameters than values")
            return _literal(queue.pop(0))
        return node

    def rewrite(node):
        if isinstance(node, exp.Anonymous) and node.name.lower() == "pseudonym":
            value, key = node.expressions
            inner = exp.func("sha2", exp.func("concat", key.copy(), value.copy()), exp.Literal.number(256))
            return exp.func("sha2", exp.func("concat", key.copy(), inner), exp.Literal.number(256))
        if isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us":
            return exp.Anonymous(this="unix_micros", expressions=[e.copy() for e in node.expressions])
        if isinstance(node, exp.DataType) and node.is_type(exp.DataType.Type.INT128):
            # Spark has no 128-bit integer: its widest integer type is DECIMAL(38, 0).
            return exp.DataType.build("DECIMAL(38, 0)")
        if isinstance(node, exp.Anonymous) and node.name.lower() == "try_strptime":
            # Null for a value that does not fit (Spark's to_timestamp raises under ANSI mode).
            value, fmt = node.expressions
            return exp.Anonymous(this="try_to_timestamp", expressions=[value.copy(), exp.Literal.string(_java(fmt))])
        if isinstance(node, exp.DateDiff) and node.text("unit").upper() in _PER_YEAR:
            # DuckDB counts the month (quarter, year) boundaries crossed, Spark the whole months elapsed.
            per_year = _PER_YEAR[node.text("unit").upper()]
            end, start = node.this, node.expression
            years = exp.Sub(this=exp.func("year", end.copy()), expression=exp.func("year", start.copy()))
            if per_year == 1:
                return exp.paren(years)
            part = "month" if per_year == 12 else "quarter"
            within = exp.Sub(this=exp.func(part, end.copy()), expression=exp.func(part, start.copy()))
            return exp.paren(
                exp.Add(this=exp.Mul(this=exp.paren(years), expression=exp.Literal.number(per_year)), expression=within)
            )
        return node

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise TranspileError(f"DuckDB SQL SQLGlot cannot parse: {exc}") from None
    tree = _md5_number(tree.transform(bind))
    if queue:
        raise TranspileError(f"{len(queue)} ? parameter value(s) left over")
    return tree.transform(rewrite).sql(dialect="spark", pretty=pretty)


_PER_YEAR = {"MONTH": 12, "QUARTER": 4, "YEAR": 1}


def _java(fmt) -> str:
    """A strftime format (a string literal) as Spark's datetime pattern."""
    from sqlglot.dialects.spark import Spark
    from sqlglot.time import format_time

    if not fmt.is_string:
        raise TranspileError(f"the format of try_strptime must be a string literal, not {fmt.sql()}")
    return format_time(fmt.this, Spark.INVERSE_TIME_MAPPING, Spark.INVERSE_TIME_TRIE)


def md5_number_word_factors(modulus: int) -> list[int]:
    """What each 32-bit word of a 128-bit number weighs modulo ``modulus``, most significant
    first: ``n % m == sum(word_i * factor_i) % m``; the sum fits a BIGINT for a modulus below 2^29."""
    return [pow(2, 32 * i, modulus) for i in (3, 2, 1, 0)]


def _md5_number(tree):
    """DuckDB's ``md5_number(x)``: the MD5 digest of x read as one little-endian 128-bit
    integer. Spark has no 128-bit integer, so it is rewritten where the project uses it:
    ``md5_number(x) % <integer>``, from the four 32-bit words of the number (the digest's hex
    with its bytes reversed, most significant first; see ``md5_number_word_factors``).
    Anywhere else it is refused rather than guessed."""
    from sqlglot import exp

    for node in list(tree.find_all(exp.Anonymous)):
        if node.name.lower() != "md5_number":
            continue
        (value,) = node.expressions
        # The digest's bytes reversed: reverse the hex digits, then swap each pair back.
        number_hex = exp.func(
            "regexp_replace",
            exp.func("reverse", exp.func("md5", value.copy())),
            exp.Literal.string("(.)(.)"),
            exp.Literal.string("$2$1"),
        )
        parent = node.parent
        if (
            isinstance(parent, exp.Mod)
            and parent.this is node
            and isinstance(parent.expression, exp.Literal)
            and parent.expression.is_int
        ):
            modulus = int(parent.expression.name)
            factors = md5_number_word_factors(modulus)
            if (2**32 - 1) * sum(factors) >= 2**63:  # a word times its factor, summed, past a BIGINT
                raise TranspileError(
                    f"md5_number(x) % {modulus} would overflow Spark's BIGINT (a modulus below 2^29 always fits)"
                )
            words = [
                exp.cast(
                    exp.func(
                        "conv",
                        exp.func("substr", number_hex.copy(), exp.Literal.number(1 + 8 * i), exp.Literal.number(8)),
                        exp.Literal.number(16),
                        exp.Literal.number(10),
                    ),
                    exp.DataType.build("BIGINT"),
                )
                for i in range(4)
            ]
            total = None
            for word, factor in zip(words, factors, strict=True):
                term = word if factor == 1 else exp.Mul(this=word, expression=exp.Literal.number(factor))
                total = term if total is None else exp.Add(this=total, expression=term)
            parent.replace(exp.Mod(this=exp.Paren(this=total), expression=exp.Literal.number(modulus)))
        else:
            raise TranspileError(f"md5_number is rewritten for Spark only as md5_number(x) % <integer>: {parent.sql()}")
    return tree
