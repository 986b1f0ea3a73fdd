"""BFCL's executable classes (bfcl-eval) as ready toolsets: their JSON docs as schemas, their methods as tools.

BFCL writes schemas in its own dialect (`dict`, `float`, `tuple`, `any`, defaults of "None"); they are mapped to
JSON schema here. Calls run on BFCL's own instances through `bfcl_classes.execute`; a call that may change them
runs on a deep copy that is written back into them only if it returns before its timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .bfcl_classes import BfclCase, bfcl_execute, fresh_instances
from .calls import ToolCall
from .errors import ToolLoadError
from .runners import StatefulFunction, ToolState
from .tool import Tool
from .toolset import ToolSet

BFCL_CLASSES = ("GorillaFileSystem", "MathAPI", "MessageAPI", "TwitterAPI", "TicketAPI", "TradingBot", "TravelAPI",
                "VehicleControlAPI")

# Read-only methods (no side effects on the instance; equal arguments on equal state give equal results): the
# only ones that may be cached or speculated. Checked against each method's source in bfcl-eval 2026.3.23.
PURE_METHODS: dict[str, frozenset[str]] = {
    "GorillaFileSystem": frozenset({"ls", "cat", "pwd", "find", "grep", "wc", "du", "diff", "tail", "sort"}),
    "MathAPI": frozenset({"absolute_value", "add", "divide", "imperial_si_conversion", "logarithm", "max_value",
                          "mean", "min_value", "multiply", "percentage", "power", "round_number",
                          "si_unit_conversion", "square_root", "standard_deviation", "subtract", "sum_values"}),
    "MessageAPI": frozenset({"get_message_stats", "get_user_id", "list_users", "message_get_login_status",
                             "search_messages", "view_messages_sent"}),
    "TwitterAPI": frozenset({"get_tweet", "get_tweet_comments", "get_user_stats", "get_user_tweets",
                             "list_all_following", "posting_get_login_status", "search_tweets"}),
    "TicketAPI": frozenset({"get_ticket", "get_user_tickets", "ticket_get_login_status"}),
    "TradingBot": frozenset({"filter_stocks_by_price", "get_account_info", "get_available_stocks",
                             "get_current_time", "get_order_details", "get_order_history", "get_stock_info",
                             "get_symbol_by_name", "get_transaction_history", "get_watchlist",
                             "trading_get_login_status"}),
    "TravelAPI": frozenset({"compute_exchange_rate", "get_all_credit_cards", "get_booking_history",
                            "get_budget_fiscal_year", "get_credit_card_balance", "get_flight_cost",
                            "get_nearest_airport_by_city", "list_all_airports", "retrieve_invoice",
                            "travel_get_login_status", "verify_traveler_information"}),
    "VehicleControlAPI": frozenset({"check_tire_pressure", "displayCarStatus", "display_log", "estimate_distance",
                                    "estimate_drive_feasibility_by_mileage", "find_nearest_tire_shop",
                                    "gallon_to_liter", "get_current_speed", "get_outside_temperature_from_google",
                                    "get_outside_temperature_from_weather_com", "get_zipcode_based_on_city",
                                    "liter_to_gallon"}),
}

_TYPES = {"dict": "object", "float": "number", "tuple": "array", "list": "array", "str": "string", "int": "integer",
          "bool": "boolean"}


def bfcl_schema(schema: Any) -> Any:
    """A BFCL parameter schema in JSON schema: its type names mapped, `any` unconstrained, "None" defaults dropped."""
    if isinstance(schema, list):
        return [bfcl_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            if value == "any":
                continue
            out[key] = _TYPES.get(value, value)
        elif key == "default" and value == "None":  # BFCL's way of writing "optional, no default"
            continue
        elif key == "properties" and isinstance(value, dict):
            out[key] = {k: bfcl_schema(v) for k, v in value.items()}
        else:
            out[key] = bfcl_schema(value)
    return out


def _bound(name: str, state: ToolState) -> StatefulFunction:
    # A call that may change the instances runs on a copy of them (OnStateCopy): one that times out cannot
    # change them afterwards.
    def run(objects: dict[str, Any], arguments: dict[str, Any]) -> Any:
        return bfcl_execute(ToolCall("", name, arguments), dict(objects))

    return StatefulFunction(name, run, state)


def bfcl_tools(case: BfclCase, instances: Mapping[str, Any] | None = None, *,
               timeout: float | None = 30.0) -> ToolSet:
    """The case's functions as tools, bound to `instances` (default: fresh ones in the case's starting state)."""
    live = ToolState(dict(instances) if instances is not None else fresh_instances(case))
    owner = {d["name"]: cls for cls in case.involved_classes for d in BfclCase(
        "", (), (), {}, (cls,)).function_docs()}
    tools = []
    for doc in case.function_docs():
        name = doc["name"]
        pure = name in PURE_METHODS.get(owner.get(name, ""), frozenset())
        # BFCL prefixes every description with its class's blurb; the tool's own part is what tells tools apart.
        description = str(doc.get("description", "")).split("Tool description: ", 1)[-1]
        tools.append(Tool(name, description, bfcl_schema(doc["parameters"]), _bound(name, live), pure))
    return ToolSet(tools, timeout=timeout)


def bfcl_toolset(class_names: Iterable[str], *, timeout: float | None = 30.0) -> ToolSet:
    """BFCL classes (e.g. GorillaFileSystem, MathAPI) as one toolset on fresh, empty instances."""
    names = tuple(class_names)
    unknown = [n for n in names if n not in BFCL_CLASSES]
    if unknown:
        raise ToolLoadError(f"unknown BFCL class(es) {unknown}; known: {', '.join(BFCL_CLASSES)}")
    return bfcl_tools(BfclCase(id="moa-stream-tools", turns=(), ground_truth=(), initial_config={},
                               involved_classes=names), timeout=timeout)
