"""Generate synthetic credit records for a local network of three nodes.

    python scripts/gen_data.py --out DIR --enterprises N --seed S

writes one JSON Lines file per node (DIR/510000.jsonl Sichuan province, DIR/510100.jsonl
Chengdu city, DIR/310000.jsonl Shanghai) and DIR/enterprises.json listing the enterprises
(uscc, name, area, and which node holds which categories). Data follows how records are
really spread: Chengdu's bureaus give Chengdu firms' registration, social security and court
records to the city node; the province's tax and market-regulation bureaus give tax records
and penalties for every Sichuan firm (and registration outside Chengdu) to the province node;
Shanghai's node holds everything for Shanghai firms.

The same seed gives byte-identical files: every date derives from REFERENCE_DATE, not the
clock. Every line is valid; tests build bad lines themselves.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from xinyi.records import uscc  # noqa: E402

REFERENCE_DATE = dt.date(2026, 6, 30)  # the data's "now": every date is on or before it
MONTHS = 12

NODES = ("510000", "510100", "310000")
CITY_CATEGORIES = ("registration", "social_security", "judicial")
PROVINCE_CATEGORIES = ("tax", "admin_penalty", "dishonesty_list")
ALL_CATEGORIES = ("registration", "tax", "social_security", "judicial", "admin_penalty", "dishonesty_list")


@dataclass(frozen=True)
class Area:
    code: str
    city: str  # 成都
    district: str  # 锦江 (empty for a prefecture-level city as a whole)
    district_suffix: str  # 区 or 新区
    court_prefix: str  # 川 / 沪: the province's abbreviation in case numbers


AREAS: tuple[Area, ...] = (
    Area("510104", "成都", "锦江", "区", "川"),
    Area("510105", "成都", "青羊", "区", "川"),
    Area("510106", "成都", "金牛", "区", "川"),
    Area("510107", "成都", "武侯", "区", "川"),
    Area("510108", "成都", "成华", "区", "川"),
    Area("510700", "绵阳", "", "", "川"),
    Area("511300", "南充", "", "", "川"),
    Area("310115", "上海", "浦东", "新区", "沪"),
    Area("310104", "上海", "徐汇", "区", "沪"),
)
# Chengdu half the firms, the rest of Sichuan a fifth, Shanghai the remainder.
AREA_WEIGHTS = (10, 10, 10, 10, 10, 10, 10, 15, 15)

TRADE_WORDS = (
    "蓉", "锦", "天府", "华", "鑫", "盛", "泰", "诚", "信", "恒", "瑞", "丰", "达", "通", "宏", "远",
    "新", "创", "汇", "嘉", "德", "源", "川", "浦", "江", "海", "金", "银", "龙", "凤", "安", "康",
)
INDUSTRIES = (
    "科技", "信息技术", "商贸", "建筑工程", "食品", "物流", "餐饮管理", "机械制造", "农业开发",
    "文化传媒", "医药", "环保科技", "电子", "服装", "建材", "汽车服务",
)
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高郑梁谢宋唐许韩冯邓曹彭曾萧田董袁潘蒋蔡余杜叶程魏苏吕丁任沈姚卢姜崔钟谭陆汪范廖"
GIVEN_NAMES = (
    "伟", "芳", "娜", "敏", "静", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明", "超", "霞",
    "平", "刚", "建华", "志强", "秀英", "桂英", "晓东", "海燕", "国庆", "红梅", "小龙", "文博",
)
ROADS = ("人民南路", "蜀都大道", "天府大道", "红星路", "建设路", "世纪大道", "淮海中路", "解放路", "临江路", "滨江路")
CAPITALS = (100_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 5_000_000, 10_000_000, 50_000_000)
RATINGS, RATING_WEIGHTS = ("A", "B", "M", "C", "D"), (30, 45, 15, 7, 3)
STATUSES, STATUS_WEIGHTS = ("active", "revoked", "cancelled", "suspended"), (92, 2, 4, 2)
PENALTY_REASONS = (
    "未按规定期限办理纳税申报",
    "未按规定公示年度报告",
    "销售不符合食品安全标准的食品",
    "违反消防安全管理规定",
    "超标排放大气污染物",
    "未按规定为职工缴纳社会保险费",
    "发布虚假广告",
)
PROVINCE_NAMES = {"川": "四川省", "沪": "上海市"}


@dataclass(frozen=True)
class Enterprise:
    uscc: str
    name: str
    area: Area
    legal_representative: str
    capital_yuan: int
    established: dt.date
    status: str
    rating: str
    headcount: int


def generate(out: Path, enterprises: int, seed: int) -> dict:
    """Write the node files and enterprises.json under `out`; return what was written.

    Returns {"enterprises": [...as in enterprises.json], "files": {node: path}, "records": {node: count}}.
    """
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    firms = _enterprises(rng, enterprises)
    lines: dict[str, list[str]] = {node: [] for node in NODES}
    for firm in firms:
        for node, categories in holdings(firm.area.code).items():
            for category in categories:
                lines[node].extend(json.dumps(r, ensure_ascii=False) for r in _BUILDERS[category](rng, firm))
    files = {}
    for node in NODES:
        files[node] = out / f"{node}.jsonl"
        files[node].write_text("".join(line + "\n" for line in lines[node]), encoding="utf-8")
    listing = [
        {"uscc": f.uscc, "name": f.name, "area": f.area.code, "nodes": {n: list(c) for n, c in holdings(f.area.code).items()}}
        for f in firms
    ]
    # One enterprise a line: readable, and diffs well between seeds.
    rows = ",\n".join(json.dumps(e, ensure_ascii=False) for e in listing)
    (out / "enterprises.json").write_text(f"[\n{rows}\n]\n" if rows else "[]\n", encoding="utf-8")
    return {"enterprises": listing, "files": files, "records": {node: len(lines[node]) for node in NODES}}


def holdings(area: str) -> dict[str, tuple[str, ...]]:
    """Which node holds which categories for a firm registered in `area`."""
    if area.startswith("5101"):
        return {"510100": CITY_CATEGORIES, "510000": PROVINCE_CATEGORIES}
    if area.startswith("51"):
        return {"510000": ("registration", *PROVINCE_CATEGORIES)}
    return {"310000": ALL_CATEGORIES}


# --- enterprises ----------------------------------------------------------------------------


def _enterprises(rng: random.Random, count: int) -> list[Enterprise]:
    codes: set[str] = set()
    names: set[str] = set()
    firms = []
    while len(firms) < count:
        area = rng.choices(AREAS, AREA_WEIGHTS)[0]
        code, name = _uscc(rng, area), _name(rng, area)
        if code in codes or name in names:
            continue  # both are unique in real registers
        codes.add(code)
        names.add(name)
        firms.append(
            Enterprise(
                uscc=code,
                name=name,
                area=area,
                legal_representative=_person(rng),
                capital_yuan=rng.choice(CAPITALS),
                established=_day_between(rng, dt.date(1995, 1, 1), REFERENCE_DATE - dt.timedelta(days=400)),
                status=rng.choices(STATUSES, STATUS_WEIGHTS)[0],
                rating=rng.choices(RATINGS, RATING_WEIGHTS)[0],
                headcount=int(rng.lognormvariate(3, 1)) + 1,
            )
        )
    return firms


def _uscc(rng: random.Random, area: Area) -> str:
    """ "91" (market regulation, company) + area + organization code + check character."""
    body = "".join(rng.choice("0123456789") for _ in range(8))
    code = uscc.with_check_character("91" + area.code + body + _organization_check(body))
    if not uscc.is_valid(code):  # invalid codes here would make every test that uses the data wrong
        raise RuntimeError(f"generated an invalid USCC {code}: {uscc.problem(code)}")
    return code


def _organization_check(body: str) -> str:
    """GB 11714 check character of an 8-digit organization code body."""
    weights = (3, 7, 9, 10, 5, 8, 4, 2)
    value = 11 - sum(int(ch) * w for ch, w in zip(body, weights)) % 11
    return {10: "X", 11: "0"}.get(value, str(value))


def _name(rng: random.Random, area: Area) -> str:
    trade = "".join(rng.sample(TRADE_WORDS, 2))
    return f"{area.city}{area.district}{trade}{rng.choice(INDUSTRIES)}有限公司"


def _person(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN_NAMES)


# --- records --------------------------------------------------------------------------------


def _line(firm: Enterprise, category: str, as_of: dt.date, source: str, **fields) -> dict:
    return {"uscc": firm.uscc, "category": category, "as_of": as_of.isoformat(), "source": source, **fields}


def _registration(rng: random.Random, firm: Enterprise) -> list[dict]:
    a = firm.area
    return [
        _line(
            firm, "registration", REFERENCE_DATE, f"{a.city}市市场监督管理局",
            name=firm.name,
            legal_representative=firm.legal_representative,
            registered_capital=f"{firm.capital_yuan}.00",
            established=firm.established.isoformat(),
            status=firm.status,
            address=f"{a.city}市{a.district}{a.district_suffix}{rng.choice(ROADS)}{rng.randint(1, 999)}号",
        )
    ]


def _tax(rng: random.Random, firm: Enterprise) -> list[dict]:
    source = f"国家税务总局{PROVINCE_NAMES[firm.area.court_prefix]}税务局"
    scale = firm.headcount * rng.randint(2_000, 8_000)  # cents of tax per employee-month, roughly
    return [
        _line(firm, "tax", _month_after(period).replace(day=15), source,
              period=f"{period:%Y-%m}", tax_paid=_yuan(scale * rng.randint(50, 150)), credit_rating=firm.rating)
        for period in _periods()
    ]


def _social_security(rng: random.Random, firm: Enterprise) -> list[dict]:
    source = f"{firm.area.city}市人力资源和社会保障局"
    rows = []
    for period in _periods():
        headcount = max(1, firm.headcount + rng.randint(-2, 2))
        rows.append(
            _line(firm, "social_security", _month_after(period).replace(day=10), source,
                  period=f"{period:%Y-%m}", insured_headcount=headcount,
                  contributions_paid=_yuan(headcount * rng.randint(110_000, 250_000)))
        )
    return rows


def _judicial(rng: random.Random, firm: Enterprise) -> list[dict]:
    if rng.random() >= 0.15:
        return []
    a = firm.area
    court = f"{a.city}市{a.district}{a.district_suffix}人民法院"  # judicial records come from district courts only
    rows = []
    for _ in range(rng.randint(1, 3)):
        filed = _day_between(rng, REFERENCE_DATE - dt.timedelta(days=3 * 365), REFERENCE_DATE)
        rows.append(
            _line(firm, "judicial", REFERENCE_DATE, f"{PROVINCE_NAMES[a.court_prefix]}高级人民法院",
                  case_no=f"({filed.year}){a.court_prefix}{a.code[2:6]}民初{rng.randint(100, 29999)}号",
                  court=court, filed=filed.isoformat(),
                  role=rng.choices(("defendant", "plaintiff"), (65, 35))[0],
                  amount=_yuan(rng.randint(1_000_000, 500_000_000)),
                  status=rng.choices(("closed", "pending", "enforcement"), (60, 25, 15))[0])
        )
    return rows


def _admin_penalty(rng: random.Random, firm: Enterprise) -> list[dict]:
    if rng.random() >= 0.08:
        return []
    a = firm.area
    decided = _day_between(rng, REFERENCE_DATE - dt.timedelta(days=2 * 365), REFERENCE_DATE)
    authority = f"{a.city}市{a.district}{a.district_suffix}市场监督管理局"
    return [
        _line(firm, "admin_penalty", REFERENCE_DATE, f"{PROVINCE_NAMES[a.court_prefix]}市场监督管理局",
              decision_no=f"{a.city[0]}{a.district[:1]}市监罚〔{decided.year}〕{rng.randint(1, 999)}号",
              authority=authority, decided=decided.isoformat(),
              reason=rng.choice(PENALTY_REASONS), amount=_yuan(rng.randint(10, 2_000) * 100_00))
    ]


def _dishonesty_list(rng: random.Random, firm: Enterprise) -> list[dict]:
    if rng.random() >= 0.03:
        return []
    listed = _day_between(rng, REFERENCE_DATE - dt.timedelta(days=3 * 365), REFERENCE_DATE)
    authority = f"{PROVINCE_NAMES[firm.area.court_prefix]}发展和改革委员会"
    return [_line(firm, "dishonesty_list", REFERENCE_DATE, authority, list_name="严重失信主体名单", authority=authority,
                  listed=listed.isoformat(), reason="拒不履行法院生效判决")]


_BUILDERS = {
    "registration": _registration,
    "tax": _tax,
    "social_security": _social_security,
    "judicial": _judicial,
    "admin_penalty": _admin_penalty,
    "dishonesty_list": _dishonesty_list,
}


def _periods() -> list[dt.date]:
    """The first days of the MONTHS months before REFERENCE_DATE's month.

    A month's figures are reported in the next month, so they too are dated on or before REFERENCE_DATE.
    """
    months = [_month_before(REFERENCE_DATE.replace(day=1))]
    for _ in range(MONTHS - 1):
        months.append(_month_before(months[-1]))
    return months[::-1]


def _month_before(first: dt.date) -> dt.date:
    return (first - dt.timedelta(days=1)).replace(day=1)


def _month_after(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


def _day_between(rng: random.Random, first: dt.date, last: dt.date) -> dt.date:
    return first + dt.timedelta(days=rng.randint(0, (last - first).days))


def _yuan(cents: int) -> str:
    """Integer cents as the "1234.50" text the network stores (no float ever touches money)."""
    return f"{cents // 100}.{cents % 100:02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write the files into")
    parser.add_argument("--enterprises", type=int, default=200, help="how many enterprises (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; the same seed gives the same files")
    args = parser.parse_args()
    if args.enterprises < 0:
        parser.error("--enterprises must not be negative")
    result = generate(args.out, args.enterprises, args.seed)
    counts = ", ".join(f"{path.name} {result['records'][node]}" for node, path in result["files"].items())
    print(f"{len(result['enterprises'])} enterprises; records: {counts}", file=sys.stderr)


if __name__ == "__main__":
    main()
