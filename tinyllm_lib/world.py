"""The project's synthetic bilingual world: people, places, things and numbers.

No dataset hub is reachable, so the project makes its own data. Everything below comes from
seeded ``random.Random`` generators, so one seed always gives byte-for-byte the same files.

From the world come three things:

* a pretraining corpus of English and Chinese documents. Every fact is stated many ways:
  several templates per attribute and language, shuffled sentence order, profile cards,
  stories, bilingual pairs, lists by city. Allen-Zhu and Li (2023, "Physics of Language
  Models 3.1") found that a model can be fine-tuned to *answer questions* about facts it
  read in pretraining only when pretraining stated them with such variety; one fixed
  biography per person is memorised word by word but the knowledge stays locked in it.
  A little plain-text question/answer text about some people helps too.
* ChatML instruction conversations in task families with short, exact answers, split into
  train/val/test. Each is tagged with its family (``task``) and its expected reply
  (``answer``), so exact match can be measured family by family.
* the ``heldout_facts`` split: questions about people whose facts are in the pretraining
  corpus but in no instruction example and no corpus Q/A. Answering them measures whether
  fine-tuning taught the model to *extract* what pretraining stored.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SEED = 1234
LANGS = ("en", "zh")
TASKS = (
    "facts", "arithmetic", "string", "sort", "count", "translate", "system_format", "multi_turn",
)
HELDOUT_TASK = "heldout_facts"
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Term:
    """One word or name in both languages."""

    en: str
    zh: str

    def text(self, lang: str) -> str:
        return self.en if lang == "en" else self.zh


def _terms(spec: str) -> tuple[Term, ...]:
    """Parse a table written as whitespace-separated ``english=中文`` pairs."""
    return tuple(Term(*pair.split("=")) for pair in spec.split())


# ---------------------------------------------------------------------------------------------
# Vocabulary. Every English word and every Chinese word appears once in the dictionary, so a
# translation question has exactly one right answer.

COLOURS = _terms("""
    red=红色 blue=蓝色 green=绿色 yellow=黄色 purple=紫色 orange=橙色 pink=粉色 black=黑色
    white=白色 brown=棕色 grey=灰色 gold=金色""")
PETS = _terms("""
    cat=猫 dog=狗 rabbit=兔子 parrot=鹦鹉 hamster=仓鼠 goldfish=金鱼 turtle=乌龟 horse=马
    duck=鸭子 goat=山羊 pig=猪 owl=猫头鹰""")
FOODS = _terms("""
    rice=米饭 noodles=面条 dumplings=饺子 bread=面包 soup=汤 fish=鱼 cake=蛋糕 pizza=披萨
    tofu=豆腐 cheese=奶酪 chocolate=巧克力 honey=蜂蜜 porridge=粥 salad=沙拉""")
JOBS = _terms("""
    teacher=老师 doctor=医生 nurse=护士 farmer=农民 baker=面包师 painter=画家 singer=歌手
    pilot=飞行员 engineer=工程师 writer=作家 driver=司机 cook=厨师 lawyer=律师
    scientist=科学家 gardener=园丁 fisherman=渔民 tailor=裁缝 musician=音乐家 carpenter=木匠
    librarian=图书管理员 dentist=牙医 postman=邮递员""")
OBJECTS = _terms("""
    book=书 pen=笔 cup=杯子 chair=椅子 table=桌子 bag=包 key=钥匙 clock=钟 lamp=灯 bed=床
    door=门 window=窗户 box=盒子 ball=球 hat=帽子 shoe=鞋 phone=手机 computer=电脑
    bicycle=自行车 car=汽车 boat=船 train=火车 umbrella=雨伞 map=地图 paper=纸 knife=刀
    spoon=勺子 bowl=碗 bottle=瓶子 camera=相机 guitar=吉他 piano=钢琴 kite=风筝 coin=硬币
    ring=戒指 candle=蜡烛 mirror=镜子""")
OTHER_WORDS = _terms("""
    sun=太阳 moon=月亮 star=星星 sky=天空 cloud=云 rain=雨 snow=雪 wind=风 river=河 lake=湖
    sea=大海 mountain=山 tree=树 flower=花 grass=草 stone=石头 fire=火 water=水 forest=森林
    island=岛 apple=苹果 banana=香蕉 pear=梨 grape=葡萄 peach=桃子 lemon=柠檬
    watermelon=西瓜 strawberry=草莓 cherry=樱桃 tea=茶 milk=牛奶 coffee=咖啡 juice=果汁
    bird=鸟 bear=熊 tiger=老虎 lion=狮子 monkey=猴子 elephant=大象 sheep=绵羊 cow=奶牛
    chicken=鸡 snake=蛇 frog=青蛙 bee=蜜蜂 butterfly=蝴蝶 wolf=狼 fox=狐狸 panda=熊猫
    friend=朋友 child=孩子 baby=婴儿 hand=手 eye=眼睛 ear=耳朵 nose=鼻子 mouth=嘴 head=头
    foot=脚 heart=心 big=大 small=小 hot=热 cold=冷 happy=快乐 sad=难过 fast=快 slow=慢
    new=新 long=长 tall=高 good=好 bad=坏 beautiful=美丽 clean=干净 quiet=安静 busy=忙
    easy=容易 bright=明亮 heavy=重 empty=空 eat=吃 drink=喝 run=跑 walk=走路 read=读 write=写
    sing=唱 dance=跳舞 swim=游泳 sleep=睡觉 fly=飞 buy=买 sell=卖 open=打开 close=关上 listen=听
    speak=说 look=看 play=玩 jump=跳 climb=爬 think=想 learn=学习 teach=教 help=帮助 wait=等
    give=给 morning=早上 evening=晚上 today=今天 tomorrow=明天 yesterday=昨天 spring=春天
    summer=夏天 autumn=秋天 winter=冬天 year=年 month=月 week=星期 school=学校 house=房子
    home=家 shop=商店 park=公园 hospital=医院 library=图书馆 market=市场 farm=农场
    bridge=桥 road=路 city=城市 village=村庄 garden=花园 kitchen=厨房 station=车站 bank=银行
    museum=博物馆""")
DICTIONARY = COLOURS + PETS + FOODS + JOBS + OBJECTS + OTHER_WORDS

# Single lowercase English words of 3 to 9 letters: the material of the string, sort and
# count tasks.
SPELLING_WORDS = tuple(t.en for t in DICTIONARY if t.en.isalpha() and 3 <= len(t.en) <= 9)

CITY_PREFIXES = _terms("""
    Stone=石 River=河 Oak=橡 Pine=松 Silver=银 Maple=枫 Willow=柳 Iron=铁 Bright=明 East=东
    West=西 North=北 South=南 Cloud=云 Lake=湖 Spring=泉 Elm=榆 Sand=沙""")
CITY_SUFFIXES = _terms("""
    ford=渡 field=田 bridge=桥 port=港 wood=林 dale=谷 brook=溪 mouth=口 ville=城 gate=关
    haven=湾 hill=岭""")

# Every person gets an English first name of their own (no first name is the end of another,
# so a full name never hides inside another). With shared first names a fact had to be bound
# to a *pair* of common tokens, and the 4M-parameter base learnt English facts far less well
# than Chinese ones, whose given names almost never repeat.
FEMALE_NAMES_EN = """Abigail Ada Agnes Alice Amber Amelia Amy Anna Audrey Ava Beatrice Bella Beth
    Bonnie Brenda Bridget Camila Carla Caroline Cecilia Celia Charlotte Chloe Clara Claire Cora
    Daisy Daphne Diana Dora Edith Eleanor Eliza Eloise Emily Emma Erin Esther Eva Evelyn Faith
    Fiona Flora Frances Freya Gemma Georgia Gloria Grace Greta Hannah Harriet Hazel Heidi Helen
    Holly Imogen Irene Iris Isla Ivy Jane Jasmine Jean Jessica Joan Josie Joy Judith Julia June
    Karen Kate Kelly Laura Leah Lillian Linda Lisa Lola Louise Lucy Lydia Mabel Maggie Margaret
    Maria Martha Matilda Maya Megan Melissa Mia Molly Monica Naomi Natalie Nina Nora Olive Olivia
    Paige Pamela Penny Phoebe Piper Polly Priscilla Rachel Rebecca Rita Robin Rosa Ruby Ruth
    Sabrina Sally Sara Scarlett Selena Sophie Stella Susan Tessa Thea Tina Ursula Valerie Vera
    Violet Wendy Willa Yvonne Zara Zoe Alma Bianca Dinah Greer Hilda Ingrid Jodie Kira Lorna
    Miriam Nadia Odette Petra Rhoda Sylvia Tamsin Una Viola Winifred""".split()
MALE_NAMES_EN = """Aaron Adam Adrian Albert Alan Alex Alfred Andrew Anthony Arthur Austin Barry Ben
    Bernard Blake Bruce Caleb Calvin Carl Charles Chris Clark Colin Connor Craig Daniel Dennis
    Derek Dominic Douglas Dylan Edgar Edward Elliot Emil Eric Ethan Eugene Evan Felix Fergus Frank
    Frederick Gabriel Gareth George Gerald Gordon Graham Gregory Harold Harvey Hector Henry Howard
    Hugo Ivan Jack Jacob James Jason Jasper Jeremy Jerome Jonah Joseph Joshua Julian Justin Keith
    Kevin Kyle Lance Lawrence Leo Leonard Lewis Liam Louis Lucas Luke Malcolm Marcus Mark Martin
    Matthew Max Miles Milo Morgan Nathan Neil Nigel Noah Norman Oliver Oscar Owen Patrick Paul
    Peter Philip Ralph Raymond Rex Richard Robert Roger Roland Ronald Rupert Russell Ryan Samuel
    Scott Sebastian Seth Simon Stanley Stephen Steven Stuart Terence Theo Thomas Timothy Toby
    Trevor Tristan Victor Vincent Wallace Walter Warren Wesley William Xavier Yusuf Zachary Ambrose
    Barnaby Cedric Desmond Ewan Gilbert Humphrey Ignatius Jonas""".split()
FAMILY_NAMES_EN = """Berg Brook Carter Dale Ellis Foster Grant Hale Hayes Irwin Jensen Keller Lane
    Marsh Moore Nash Olsen Parker Quinn Reed Shaw Tanner Vance Wade Walsh Young Bishop Cole
    Drake Holt Knox Lowe Mills Price Rhodes Sutton Turner Webb York Finch""".split()
SURNAMES_ZH = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹"
# Chinese given names are two characters: the first belongs to that person alone (so, as with
# the English first names, one distinctive token points at one person), the second comes from
# the gendered list. None of these characters occurs in the corpus outside names.
GIVEN_FIRST_ZH = """柏宝蓓碧冰彬灿昌琛澄驰楚聪翠丹德迪栋恩帆方丰福馥庚冠贵桂涵瀚航豪皓荷恒弘鸿
    虹桦徽惠霁佳嘉坚剑建健江姣锦晋京晶景靖菊珏君骏楷康珂坤岚蕾黎礼立莉廉琏良霖凌令龙露璐禄伦
    曼茂枚梅萌蒙淼敏铭墨牧娜楠妮宁凝诺培沛佩琪奇启倩茜庆琼仁荣蓉瑞睿润若珊善尚韶绍申盛诗仕舒
    曙朔硕颂素泰堂韬添庭彤桐童薇巍维蔚温雯武希曦熙贤娴宪湘祥翔骁晓笑信兴修秀旭萱宣轩璇勋雅亚
    妍彦艳燕扬瑶野依仪宜艺益逸毅谊吟寅瑛莹影永咏优瑜宇羽玉钰煜元媛远岳越韵蕴泽增展湛彰昭臻振
    征芝志致智忠洲竹卓梓宗遵""".replace("\n", "").replace(" ", "")
GIVEN_FEMALE_ZH = "芳丽静娟霞玲婷怡琳悦欣洁淑慧颖萍"
GIVEN_MALE_ZH = "伟强磊勇杰涛超刚鹏浩俊博军斌辉峰"


# ---------------------------------------------------------------------------------------------
# Attributes: what the world knows about each person, and the ways to say and ask it.
#
# Template fields: {name}, {value}, {a_value} (English value with "a"/"an"), {value_words}
# (a number written out). Follow-up questions also get {pron} (he/she, 他/她) and {poss}
# (his/her). The first statement template of each attribute starts with {name}: it is the
# one used when paraphrasing is switched off, and stories reuse the templates that start
# with {name} by putting a pronoun there.


@dataclass(frozen=True)
class Attribute:
    """One kind of fact about a person, with its templates per language."""

    key: str
    label: Term
    statements: dict[str, tuple[str, ...]]
    questions: dict[str, tuple[str, ...]]
    follow_ups: dict[str, tuple[str, ...]]

    @property
    def is_number(self) -> bool:
        return self.key in ("age", "lucky_number")


ATTRIBUTES = (
    Attribute(
        "city", Term("Home city", "居住城市"),
        statements={
            "en": (
                "{name} lives in {value}.", "{name}'s home city is {value}.",
                "{value} is the city where {name} lives.",
                "{name} has made a home in the city of {value}.",
                "The home of {name} is in {value}.",
                "In {value} you can find {name}, who lives there.",
            ),
            "zh": (
                "{name}住在{value}。", "{name}的家在{value}。", "{value}是{name}居住的城市。",
                "{name}在{value}安了家。", "如果你去{value}，可以见到住在那里的{name}。",
            ),
        },
        questions={
            "en": (
                "Where does {name} live?", "Which city does {name} live in?",
                "What is {name}'s home city?",
            ),
            "zh": ("{name}住在哪里？", "{name}住在哪个城市？", "{name}的家在哪个城市？"),
        },
        follow_ups={"en": ("And where does {pron} live?",), "zh": ("那{pron}住在哪里？",)},
    ),
    Attribute(
        "job", Term("Job", "职业"),
        statements={
            "en": (
                "{name} works as {a_value}.", "{name} is {a_value} by profession.",
                "By trade, {name} is {a_value}.", "{name} earns a living as {a_value}.",
                "Every day {name} goes to work as {a_value}.", "{name} has a job as {a_value}.",
            ),
            "zh": (
                "{name}是一名{value}。", "{name}的职业是{value}。", "{name}靠做{value}谋生。",
                "{name}每天都去做{value}的工作。", "{name}的工作是当{value}。",
            ),
        },
        questions={
            "en": (
                "What is {name}'s job?", "What does {name} do for a living?",
                "What does {name} work as?",
            ),
            "zh": ("{name}的职业是什么？", "{name}是做什么工作的？", "{name}做什么工作？"),
        },
        follow_ups={
            "en": ("And what does {pron} do for a living?",), "zh": ("那{pron}是做什么工作的？",),
        },
    ),
    Attribute(
        "colour", Term("Favourite colour", "最喜欢的颜色"),
        statements={
            "en": (
                "{name}'s favourite colour is {value}.",
                "The colour {name} likes best is {value}.",
                "{name} loves the colour {value} more than any other.",
                "Of all colours, {name} prefers {value}.", "{value} is {name}'s favourite colour.",
            ),
            "zh": (
                "{name}最喜欢的颜色是{value}。", "{name}最喜欢{value}。",
                "在所有颜色中，{name}最爱{value}。", "{value}是{name}最喜欢的颜色。",
                "说到颜色，{name}最喜欢的是{value}。",
            ),
        },
        questions={
            "en": (
                "What is {name}'s favourite colour?", "Which colour does {name} like best?",
                "What colour does {name} like most?",
            ),
            "zh": ("{name}最喜欢什么颜色？", "{name}最喜欢的颜色是什么？"),
        },
        follow_ups={
            "en": ("And what is {poss} favourite colour?",), "zh": ("那{pron}最喜欢什么颜色？",),
        },
    ),
    Attribute(
        "pet", Term("Pet", "宠物"),
        statements={
            "en": (
                "{name} has a pet {value}.", "{name} keeps {a_value} as a pet.",
                "{name}'s pet is {a_value}.", "At home, {name} looks after a pet {value}.",
                "The pet that {name} owns is {a_value}.",
            ),
            "zh": (
                "{name}的宠物是{value}。", "{name}养的宠物是{value}。", "{value}是{name}的宠物。",
                "{name}家里养着宠物{value}。", "{name}有一个宠物，是{value}。",
            ),
        },
        questions={
            "en": (
                "What pet does {name} have?", "What is {name}'s pet?",
                "What animal does {name} keep as a pet?",
            ),
            "zh": ("{name}养了什么宠物？", "{name}的宠物是什么？"),
        },
        follow_ups={
            "en": ("And what pet does {pron} have?",), "zh": ("那{pron}养了什么宠物？",),
        },
    ),
    Attribute(
        "food", Term("Favourite food", "最喜欢的食物"),
        statements={
            "en": (
                "{name}'s favourite food is {value}.",
                "{name} likes to eat {value} more than anything else.",
                "The food {name} loves most is {value}.",
                "Given a choice, {name} always eats {value}.",
                "{value} is {name}'s favourite food.",
            ),
            "zh": (
                "{name}最喜欢的食物是{value}。", "{name}最爱吃{value}。",
                "{value}是{name}最喜欢吃的东西。", "如果可以选择，{name}总是吃{value}。",
                "说到食物，{name}最喜欢{value}。",
            ),
        },
        questions={
            "en": ("What is {name}'s favourite food?", "What does {name} like to eat most?"),
            "zh": ("{name}最喜欢吃什么？", "{name}最喜欢的食物是什么？"),
        },
        follow_ups={
            "en": ("And what is {poss} favourite food?",), "zh": ("那{pron}最喜欢吃什么？",),
        },
    ),
    Attribute(
        "age", Term("Age", "年龄"),
        statements={
            "en": (
                "{name} is {value} years old.", "{name}'s age is {value}.",
                "{name} turned {value} this year.", "{name} is {value_words} years old.",
                "The age of {name} is {value}.",
            ),
            "zh": (
                "{name}今年{value}岁。", "{name}的年龄是{value}岁。", "{name}已经{value}岁了。",
                "{name}今年{value_words}岁。", "{name}今年满{value}岁。",
            ),
        },
        questions={
            "en": ("How old is {name}?", "What is {name}'s age?"),
            "zh": ("{name}今年多大？", "{name}几岁了？", "{name}多少岁？"),
        },
        follow_ups={"en": ("And how old is {pron}?",), "zh": ("那{pron}几岁了？",)},
    ),
    Attribute(
        "lucky_number", Term("Lucky number", "幸运数字"),
        statements={
            "en": (
                "{name}'s lucky number is {value}.", "The lucky number of {name} is {value}.",
                "{name} thinks {value} brings good luck.", "{value} is {name}'s lucky number.",
                "For {name}, the number {value} is lucky.",
            ),
            "zh": (
                "{name}的幸运数字是{value}。", "{value}是{name}的幸运数字。",
                "{name}认为{value}会带来好运。", "对{name}来说，{value}是幸运数字。",
                "{name}最喜欢的幸运数字是{value}。",
            ),
        },
        questions={
            "en": ("What is {name}'s lucky number?", "Which number is lucky for {name}?"),
            "zh": ("{name}的幸运数字是什么？", "{name}的幸运数字是几？"),
        },
        follow_ups={
            "en": ("And what is {poss} lucky number?",), "zh": ("那{pron}的幸运数字是什么？",),
        },
    ),
)
ATTRIBUTE_BY_KEY = {a.key: a for a in ATTRIBUTES}


# ---------------------------------------------------------------------------------------------
# The world.


@dataclass(frozen=True)
class Person:
    """One inhabitant: a name in each language and one value per attribute.

    ``heldout`` people's facts are in the pretraining corpus but never in instruction data.
    """

    id: int
    name: Term
    gender: str  # "female" or "male"
    facts: dict[str, Term]
    heldout: bool

    def pronoun(self, lang: str) -> str:
        if lang == "zh":
            return "她" if self.gender == "female" else "他"
        return "she" if self.gender == "female" else "he"

    def possessive(self, lang: str) -> str:
        if lang == "zh":
            return "她的" if self.gender == "female" else "他的"
        return "her" if self.gender == "female" else "his"


@dataclass
class World:
    seed: int
    cities: list[Term]
    people: list[Person]
    dictionary: tuple[Term, ...] = DICTIONARY

    def person(self, person_id: int) -> Person:
        return self.people[person_id]


@dataclass
class DataConfig:
    """Sizes of everything generated. Counts of corpus documents are per language, except
    ``capital_bios_per_person`` (English only).

    ``paraphrase=False`` states every fact with one fixed template in a fixed order: the
    no-augmentation baseline of the Physics-of-LMs experiment, for comparison.
    """

    num_people: int = 200
    num_cities: int = 24
    heldout_fraction: float = 0.25
    bios_per_person: int = 12
    capital_bios_per_person: int = 5
    stories_per_person: int = 6
    bilingual_per_person: int = 3
    qa_docs: int = 1500
    general_docs: int = 21000
    paraphrase: bool = True
    train_per_task: int = 800
    train_facts: int = 1200
    val_per_task: int = 50
    test_per_task: int = 50

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(
                f"DataConfig: heldout_fraction must be in [0, 1), got {self.heldout_fraction}"
            )
        for name in ("num_people", "num_cities"):
            if getattr(self, name) < 2:
                raise ValueError(f"DataConfig: {name} must be >= 2, got {getattr(self, name)}")
        max_cities = len(CITY_PREFIXES) * len(CITY_SUFFIXES)
        if self.num_cities > max_cities:
            raise ValueError(f"DataConfig: num_cities must be <= {max_cities}")


def _english_names(rng: random.Random, genders: Sequence[str]) -> list[str]:
    """One English name per gender in ``genders``: a first name of its own, a shared surname."""
    pools = {"female": rng.sample(FEMALE_NAMES_EN, len(FEMALE_NAMES_EN)),
             "male": rng.sample(MALE_NAMES_EN, len(MALE_NAMES_EN))}
    for gender, pool in pools.items():
        if genders.count(gender) > len(pool):
            raise ValueError(f"make_world: {genders.count(gender)} {gender} people but only "
                             f"{len(pool)} {gender} English first names")
    return [f"{pools[gender].pop()} {rng.choice(FAMILY_NAMES_EN)}" for gender in genders]


def _chinese_names(rng: random.Random, genders: Sequence[str]) -> list[str]:
    """One Chinese name per gender in ``genders``: surname, a first given character nobody else
    has, and a gendered second character."""
    if len(genders) > len(GIVEN_FIRST_ZH):
        raise ValueError(f"make_world: {len(genders)} people but only {len(GIVEN_FIRST_ZH)} "
                         "distinct first given characters")
    firsts = rng.sample(GIVEN_FIRST_ZH, len(genders))
    return [
        rng.choice(SURNAMES_ZH) + first
        + rng.choice(GIVEN_FEMALE_ZH if gender == "female" else GIVEN_MALE_ZH)
        for first, gender in zip(firsts, genders, strict=True)
    ]


def make_world(seed: int = DEFAULT_SEED, config: DataConfig | None = None) -> World:
    """The world of ``seed``: cities, then people with their facts and held-out flags."""
    config = config or DataConfig()
    rng = random.Random(f"world-{seed}")
    city_parts = [(p, s) for p in CITY_PREFIXES for s in CITY_SUFFIXES]
    cities = [
        Term(p.en + s.en, p.zh + s.zh) for p, s in rng.sample(city_parts, config.num_cities)
    ]
    genders = [rng.choice(("female", "male")) for _ in range(config.num_people)]
    names_en = _english_names(rng, genders)
    names_zh = _chinese_names(rng, genders)
    num_heldout = round(config.heldout_fraction * config.num_people)
    heldout = set(rng.sample(range(config.num_people), num_heldout))
    people = []
    for pid, gender in enumerate(genders):
        name = Term(names_en[pid], names_zh[pid])
        age = rng.randint(20, 79)
        lucky = rng.choice([n for n in range(1, 100) if n != age])
        facts = {
            "city": rng.choice(cities), "job": rng.choice(JOBS), "colour": rng.choice(COLOURS),
            "pet": rng.choice(PETS), "food": rng.choice(FOODS), "age": Term(str(age), str(age)),
            "lucky_number": Term(str(lucky), str(lucky)),
        }
        people.append(Person(pid, name, gender, facts, pid in heldout))
    return World(seed=seed, cities=cities, people=people)


def world_to_dict(world: World) -> dict[str, Any]:
    """The world as plain JSON-ready data (what ``world.json`` holds)."""
    return {
        "seed": world.seed,
        "attributes": [{"key": a.key, "en": a.label.en, "zh": a.label.zh} for a in ATTRIBUTES],
        "cities": [{"en": c.en, "zh": c.zh} for c in world.cities],
        "dictionary": [{"en": t.en, "zh": t.zh} for t in world.dictionary],
        "people": [
            {
                "id": p.id, "name_en": p.name.en, "name_zh": p.name.zh, "gender": p.gender,
                "heldout": p.heldout,
                "facts": {k: {"en": v.en, "zh": v.zh} for k, v in p.facts.items()},
            }
            for p in world.people
        ],
    }


# ---------------------------------------------------------------------------------------------
# Numbers written out.

_ONES_EN = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS_EN = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_DIGITS_ZH = "零一二三四五六七八九"


def number_to_english(n: int) -> str:
    """0..999 in English words: 42 -> "forty-two", 105 -> "one hundred and five"."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_to_english: {n} is outside 0..999")
    if n < 20:
        return _ONES_EN[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS_EN[tens] + (f"-{_ONES_EN[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    words = f"{_ONES_EN[hundreds]} hundred"
    return words + (f" and {number_to_english(rest)}" if rest else "")


def number_to_chinese(n: int) -> str:
    """0..999 in Chinese numerals: 12 -> 十二, 105 -> 一百零五, 110 -> 一百一十."""
    if not 0 <= n <= 999:
        raise ValueError(f"number_to_chinese: {n} is outside 0..999")
    if n < 10:
        return _DIGITS_ZH[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        head = "十" if tens == 1 else _DIGITS_ZH[tens] + "十"
        return head + (_DIGITS_ZH[ones] if ones else "")
    hundreds, rest = divmod(n, 100)
    words = _DIGITS_ZH[hundreds] + "百"
    if rest == 0:
        return words
    if rest < 10:
        return words + "零" + _DIGITS_ZH[rest]
    return words + _DIGITS_ZH[rest // 10] + "十" + (_DIGITS_ZH[rest % 10] if rest % 10 else "")


def number_words(n: int, lang: str) -> str:
    return number_to_english(n) if lang == "en" else number_to_chinese(n)


# ---------------------------------------------------------------------------------------------
# Stating facts.


def _with_article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _fact_value(person: Person, attr: Attribute, lang: str, shout: bool = False) -> str:
    """One of ``person``'s facts as text; ``shout`` writes a word in capitals (``WILLOWBROOK``)."""
    value = person.facts[attr.key].text(lang)
    return value.upper() if shout and not attr.is_number else value


def _render(
    template: str, person: Person, attr: Attribute, lang: str, name: str, shout: bool = False
) -> str:
    """``template`` filled in with ``person``'s fact (see ``_fact_value`` for ``shout``)."""
    value = _fact_value(person, attr, lang, shout)
    words = number_words(int(value), lang) if attr.is_number else value
    text = template.format(
        name=name, value=value, a_value=_with_article(value), value_words=words,
        pron=person.pronoun(lang), poss=person.possessive(lang),
    )
    return text[0].upper() + text[1:]


def _pick(templates: Sequence[str], rng: random.Random, paraphrase: bool) -> str:
    return rng.choice(templates) if paraphrase else templates[0]


def fact_sentence(
    person: Person, attr: Attribute, lang: str, rng: random.Random, paraphrase: bool = True,
    shout: bool = False,
) -> str:
    """One statement of one fact, in a randomly chosen phrasing."""
    template = _pick(attr.statements[lang], rng, paraphrase)
    return _render(template, person, attr, lang, person.name.text(lang), shout)


def _pronoun_sentence(
    person: Person, attr: Attribute, lang: str, rng: random.Random, paraphrase: bool
) -> str:
    """A statement whose subject is a pronoun ("She lives in ..."), for running text."""
    templates = [t for t in attr.statements[lang] if t.startswith("{name}")]
    template = _pick(templates, rng, paraphrase)
    if lang == "zh":
        return _render(template, person, attr, lang, person.pronoun(lang))
    if template.startswith("{name}'s "):
        return _render(template.replace("{name}'s", "{name}", 1), person, attr, lang,
                       person.possessive(lang))
    return _render(template, person, attr, lang, person.pronoun(lang))


def question(person: Person, attr: Attribute, lang: str, rng: random.Random) -> str:
    return _render(rng.choice(attr.questions[lang]), person, attr, lang, person.name.text(lang))


# ---------------------------------------------------------------------------------------------
# The pretraining corpus.


@dataclass(frozen=True)
class Document:
    """One pretraining document; ``kind`` says which generator wrote it."""

    kind: str
    text: str


_JOIN = {"en": " ", "zh": ""}
# A Q/A sheet either labels each line or puts the answer alone on the line after its
# question. The second layout matters for chat: a ChatML reply starts a line, and byte-level
# BPE spells a word at the start of a line ("Willowbrook") with other tokens than the same
# word after a space (" Willowbrook"), the way almost all running text has it.
_QA_LAYOUTS = {"en": ("Question: {q}\nAnswer: {a}", "{q}\n{a}"),
               "zh": ("问：{q}\n答：{a}", "{q}\n{a}")}
_GENDER_WORDS = {"en": {"female": "female", "male": "male"}, "zh": {"female": "女", "male": "男"}}
PROFILE_LAYOUTS = {"en": ("labelled", "stacked", "json", "capitals"),
                   "zh": ("labelled", "stacked", "json")}


def _other(lang: str) -> str:
    return "zh" if lang == "en" else "en"


def _fact_order(rng: random.Random, paraphrase: bool) -> list[Attribute]:
    """Every attribute once: shuffled, or in the fixed order when paraphrasing is off."""
    attrs = list(ATTRIBUTES)
    if paraphrase:
        rng.shuffle(attrs)
    return attrs


def _bio(
    person: Person, lang: str, rng: random.Random, paraphrase: bool, shout: bool = False
) -> Document:
    """A biography: every fact once, in shuffled order, each in a random phrasing."""
    order = _fact_order(rng, paraphrase)
    sentences = [fact_sentence(person, a, lang, rng, paraphrase, shout) for a in order]
    name, other = person.name.text(lang), person.name.text(_other(lang))
    link = f"{name}'s Chinese name is {other}." if lang == "en" else f"{name}的英文名字是{other}。"
    if not paraphrase:
        sentences.insert(0, link)
    elif rng.random() < 0.5:
        sentences.insert(rng.randrange(len(sentences) + 1), link)
    headers = (
        (name, f"About {name}", f"Biography: {name}") if lang == "en"
        else (name, f"关于{name}", f"人物简介：{name}")
    )
    header = _pick(headers, rng, paraphrase)
    return Document(f"bio_{lang}", f"{header}\n{_JOIN[lang].join(sentences)}")


def _capital_bio(person: Person, rng: random.Random, paraphrase: bool) -> Document:
    """An English biography whose facts are in capitals, as a form or a headline shouts them:
    "Nora Lowe lives in WILLOWBROOK."

    A capitalised word is spelled with other tokens than the word itself (``WILLOWBROOK``
    against ``Willowbrook``), so answering in uppercase needs each fact seen in capitals, and
    seen after the name as the chat writes it. Base v8 saw its facts in capitals only in
    biographies written wholly in capitals ("NORA LOWE LIVES IN ..."), and a LoRA fine-tune
    on it answered none of the 9 test questions that ask for a fact in uppercase: the
    questions name the person as usual.
    """
    bio = _bio(person, "en", rng, paraphrase, shout=True)
    return Document("bio_en_capitals", bio.text)


def profile_card(person: Person, lang: str, layout: str) -> Document:
    """An encyclopedia card, in one of ``PROFILE_LAYOUTS``.

    ``labelled``: ``label: value`` lines. ``stacked``: each value on its own line under its
    label, so that every fact also starts a line (see ``_QA_LAYOUTS``). ``json``: the record
    as a data export holds it, so a value inside ``{"answer": "..."}`` has been seen between
    JSON quotes. ``capitals``: the stacked card with the facts in capital letters (English
    only), the corpus's one place where ``WILLOWBROOK`` starts a line, as an uppercase reply
    does: byte-level BPE spells a word at a line's start with other tokens (``P AR ROT``)
    than after a space (`` PARROT``).
    """
    labels = ("Name", "Chinese name", "Gender") if lang == "en" else ("姓名", "英文名", "性别")
    fields = [*labels, *(a.label.text(lang) for a in ATTRIBUTES)]
    facts = [_fact_value(person, a, lang, shout=layout == "capitals") for a in ATTRIBUTES]
    values = [person.name.text(lang), person.name.text(_other(lang)),
              _GENDER_WORDS[lang][person.gender], *facts]
    if layout == "json":
        record = dict(zip(fields, values, strict=True))
        return Document(f"profile_{lang}", json.dumps(record, ensure_ascii=False, indent=1))
    sep = "\n" if layout in ("stacked", "capitals") else ": " if lang == "en" else "："
    text = "\n".join(f"{field}{sep}{value}" for field, value in zip(fields, values, strict=True))
    return Document(f"profile_{lang}", text)


def _bilingual(person: Person, rng: random.Random, paraphrase: bool) -> Document:
    """Each fact in English followed by its Chinese translation: ties the two names together."""
    lines = [f"{person.name.en} = {person.name.zh}"]
    lines += [
        f"{fact_sentence(person, a, 'en', rng, paraphrase)} "
        f"{fact_sentence(person, a, 'zh', rng, paraphrase)}"
        for a in _fact_order(rng, paraphrase)
    ]
    return Document("bilingual", "\n".join(lines))


_STORY = {
    "en": {
        "times": ("One morning", "One evening", "Last spring", "On a rainy day",
                  "One sunny afternoon", "Last winter"),
        "openings": ("{time}, {a} went out for a walk.", "{time}, {a} decided to visit a friend.",
                     "This is a short story about {a} and {b}."),
        "meetings": ("On the way, {pron} met {b}.", "Soon {pron} ran into an old friend, {b}.",
                     "At the market, {pron} saw {b}."),
        "endings": ("The two of them talked for a long time before going home.",
                    "They had tea together and then said goodbye.",
                    "It was a good day for both of them."),
    },
    "zh": {
        "times": ("一天早上", "一天晚上", "去年春天", "一个下雨天", "一个晴朗的下午", "去年冬天"),
        "openings": ("{time}，{a}出门散步。", "{time}，{a}决定去看望一位朋友。",
                     "这是一个关于{a}和{b}的小故事。"),
        "meetings": ("路上，{pron}遇到了{b}。", "不久，{pron}碰见了老朋友{b}。",
                     "在市场上，{pron}看见了{b}。"),
        "endings": ("两个人聊了很久才回家。", "他们一起喝了茶，然后道别。",
                    "对他们两个人来说，这是美好的一天。"),
    },
}


def _story(a: Person, b: Person, lang: str, rng: random.Random, paraphrase: bool) -> Document:
    """Two people meet; a few facts of each are told along the way, mostly with pronouns."""
    parts = _STORY[lang]
    name_a, name_b = a.name.text(lang), b.name.text(lang)
    opening = rng.choice(parts["openings"]).format(time=rng.choice(parts["times"]), a=name_a,
                                                   b=name_b)
    meeting = rng.choice(parts["meetings"]).format(pron=a.pronoun(lang), b=name_b)

    def facts_of(person: Person) -> list[str]:
        """Two or three facts: the first names the person, the rest say he or she."""
        first, *rest = rng.sample(ATTRIBUTES, rng.randint(2, 3))
        return [fact_sentence(person, first, lang, rng, paraphrase)] + [
            _pronoun_sentence(person, attr, lang, rng, paraphrase) for attr in rest
        ]

    sentences = [opening, *facts_of(a), meeting[0].upper() + meeting[1:], *facts_of(b),
                 rng.choice(parts["endings"])]
    return Document(f"story_{lang}", _JOIN[lang].join(sentences))


def _city_doc(world: World, city: Term, lang: str, rng: random.Random) -> Document:
    """Who lives in a city, with their jobs: facts seen from the other direction."""
    residents = [p for p in world.people if p.facts["city"] == city]
    rng.shuffle(residents)
    name = city.text(lang)
    if not residents:
        text = (f"{name} is a quiet city." if lang == "en" else f"{name}是一座安静的城市。")
        return Document(f"city_{lang}", text)
    if lang == "en":
        items = [f"{p.name.en} ({p.facts['job'].en})" for p in residents]
        listed = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
        text = f"{name} is a city. The people who live there include {listed}."
    else:
        items = [f"{p.name.zh}（{p.facts['job'].zh}）" for p in residents]
        listed = items[0] if len(items) == 1 else "、".join(items[:-1]) + "和" + items[-1]
        text = f"{name}是一座城市。住在那里的人有{listed}。"
    return Document(f"city_{lang}", text)


def _qa_doc(
    person: Person, attrs: Sequence[Attribute], lang: str, rng: random.Random
) -> Document:
    """Plain-text questions and answers (no ChatML), like a worksheet, in one of two layouts."""
    layout = rng.choice(_QA_LAYOUTS[lang])
    pairs = [
        layout.format(q=question(person, a, lang, rng), a=person.facts[a.key].text(lang))
        for a in attrs
    ]
    return Document("qa", "\n\n".join(pairs))


def _worksheet(question_text: str, answer: str) -> str:
    """A question in a user's words with its answer alone on the next line.

    The same remedy as the ``{q}\n{a}`` layout of ``_QA_LAYOUTS``: a skill stored only as
    ``65 + 35 = 100`` is stored in other words and other tokens than the chat's
    ``What is 65 + 35?`` and a reply that starts a line. The computed-skill generators below
    ask with the instruction tasks' own question functions.
    """
    return f"{question_text}\n{answer}"


# General text the instruction tasks build on: numbers, arithmetic, words, letters, lists.


def _numbers_doc(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(10):
        n = rng.randint(0, 100) if rng.random() < 0.7 else rng.randint(0, 999)
        en, zh = number_to_english(n), number_to_chinese(n)
        lines.append(rng.choice((
            f"{n} is written {en}.", f"{n} in words is {en}.", f"{n}写作{zh}。",
            f"数字{n}读作{zh}。", f"{n} = {en} = {zh}",
        )))
    return lines


def _counting_line(rng: random.Random) -> str:
    start = rng.randint(0, 90)
    numbers = list(range(start, start + rng.randint(4, 10) + 1))
    if rng.random() < 0.3:
        numbers.reverse()
    first, last = numbers[0], numbers[-1]
    small = range(1, rng.randint(5, 10) + 1)
    return rng.choice((
        f"Counting from {first} to {last}: {', '.join(map(str, numbers))}.",
        f"从{first}数到{last}：{'、'.join(map(str, numbers))}。",
        "Counting in words: " + ", ".join(number_to_english(n) for n in small) + ".",
        "用中文数数：" + "、".join(number_to_chinese(n) for n in small) + "。",
    ))


def _counting_doc(rng: random.Random) -> list[str]:
    return [_counting_line(rng) for _ in range(3)]


def _arithmetic_doc(rng: random.Random) -> list[str]:
    """Twenty sums and differences of numbers below 100: in symbols (``a + b = c``), in
    words, and as a worksheet that asks the way a user does.

    The symbols are the phrasing that ``experiments/dense_skills.py`` taught sums with. The
    worksheet lines (``What is 65 + 35?`` with ``100`` alone on the next line) ask with the
    arithmetic task's own question templates, so the skill is stored in the phrasing that
    chat uses; see ``_worksheet``.
    """
    lines = []
    for _ in range(20):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        op = rng.choice(("+", "-"))
        if op == "-":
            a, b = max(a, b), min(a, b)
        c = _apply(a, op, b)
        r = rng.random()
        if r < 0.45:
            lines.append(f"{a} {op} {b} = {c}")
        elif r < 0.6:
            word = _OPS[op]
            lines.append(rng.choice((f"{a} {word.en} {b} equals {c}.",
                                     f"{a}{word.zh}{b}等于{c}。")))
        else:
            lines.append(_worksheet(_arithmetic_question(a, op, b, rng.choice(LANGS), rng), str(c)))
    return lines


def _dictionary_doc(rng: random.Random) -> list[str]:
    lines = []
    for term in rng.sample(DICTIONARY, 12):
        en, zh = term.en, term.zh
        lines.append(rng.choice((
            f"{en}: {zh}", f"{zh}: {en}", f"The Chinese word for {en} is {zh}.",
            f"In Chinese, {en} is {zh}.", f"“{zh}”的英文是{en}。", f"{en}的中文是“{zh}”。",
            f"英文单词{en}的意思是{zh}。",
        )))
    return lines


def _letter_to_count(word: str, rng: random.Random) -> str:
    """A letter to count in ``word``: mostly one of its own, sometimes any letter, so that
    the count can be 0. The count task and the corpus both draw with this."""
    return rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)


def _letter_count_statement(word: str, letter: str, lang: str) -> str:
    times = word.count(letter)
    if lang == "zh":
        return f"字母{letter}在{word}中出现了{times}次。"
    return f"The letter {letter} appears {times} time{'' if times == 1 else 's'} in {word}."


def _letter_count_worksheet(word: str, rng: random.Random) -> str:
    key = ("letter", word, _letter_to_count(word, rng))
    return _worksheet(*_count_question(key, rng.choice(LANGS), rng))


def _spelling_fact(word: str, rng: random.Random) -> str:
    """One fact about how ``word`` is spelled, in one of twelve forms."""
    lang = rng.choice(LANGS)
    forms: tuple[Callable[[], str], ...] = (
        lambda: f"{word} is spelled {'-'.join(word)}.",
        lambda: f"{word} has {len(word)} letters.",
        lambda: f"{word}有{len(word)}个字母。",
        lambda: f"{word} backwards is {word[::-1]}.",
        lambda: f"{word}倒过来写是{word[::-1]}。",
        lambda: f"{word} in capital letters is {word.upper()}.",
        lambda: f"{word}的大写是{word.upper()}。",
        lambda: _worksheet(_string_question("reverse", word, lang, rng), word[::-1]),
        lambda: _worksheet(_string_question("upper", word, lang, rng), word.upper()),
        lambda: _worksheet(*_count_question(("letters", word), lang, rng)),
        lambda: _letter_count_statement(word, _letter_to_count(word, rng), lang),
        lambda: _letter_count_worksheet(word, rng),
    )
    return rng.choice(forms)()


def _spelling_doc(rng: random.Random) -> list[str]:
    """Six words with one fact each about their spelling, then a letter counted as the count
    task asks. Base v5 answered 1 for a letter missing from the word: its corpus only
    counted letters of the word itself, so it had never seen a count of 0."""
    lines = [_spelling_fact(word, rng) for word in rng.sample(SPELLING_WORDS, 6)]
    return [*lines, _letter_count_worksheet(rng.choice(SPELLING_WORDS), rng)]


def _sorting_doc(rng: random.Random) -> list[str]:
    """Five sorted lists: half as statements, half as a worksheet in the sort task's words."""
    lines = []
    for _ in range(5):
        if rng.random() < 0.5:
            kind, direction = "numbers", rng.choice(("up", "down"))
            items = rng.sample(range(100), rng.randint(3, 5))
        else:
            kind, direction = "words", "up"
            items = rng.sample(SPELLING_WORDS, rng.randint(3, 5))
        shown, answer = ", ".join(map(str, items)), _sorted_answer(items, direction)
        if rng.random() < 0.5:
            lines.append(_worksheet(_sort_question(kind, direction, items, rng.choice(LANGS), rng),
                                    answer))
        elif kind == "words":
            lines.append(rng.choice((f"The words {shown} in alphabetical order: {answer}.",
                                     f"{shown}按字母顺序排列是：{answer}。")))
        elif direction == "up":
            lines.append(rng.choice((f"The numbers {shown} from smallest to largest: {answer}.",
                                     f"{shown}从小到大排列是：{answer}。")))
        else:
            lines.append(rng.choice((f"The numbers {shown} from largest to smallest: {answer}.",
                                     f"{shown}从大到小排列是：{answer}。")))
    return lines


def _alphabet_doc(rng: random.Random) -> list[str]:
    letters = string.ascii_lowercase
    i = rng.randrange(25)
    return [rng.choice((
        f"The English alphabet: {' '.join(letters)}.",
        f"The alphabet in capital letters: {' '.join(letters.upper())}.",
        f"英文字母表：{' '.join(letters)}。",
        f"The letter after {letters[i]} is {letters[i + 1]}.",
        f"字母{letters[i]}后面是{letters[i + 1]}。",
        f"The small letter {letters[i]} is {letters[i].upper()} in capitals.",
    )) for _ in range(4)]


def _list_line(rng: random.Random) -> str:
    indices = tuple(rng.sample(range(len(OBJECTS)), rng.randint(2, 8)))
    items, n = [OBJECTS[i] for i in indices], len(indices)
    forms: tuple[Callable[[], str], ...] = (
        lambda: f"A shopping list: {', '.join(t.en for t in items)}. That is {n} items.",
        lambda: f"购物清单：{'、'.join(t.zh for t in items)}。一共有{n}样东西。",
        lambda: f"In the box there are: {', '.join(t.en for t in items)}. Counting them gives {n}.",
        lambda: f"盒子里有：{'、'.join(t.zh for t in items)}。数一数，一共{n}样。",
        lambda: _worksheet(*_count_question(("items", indices), rng.choice(LANGS), rng)),
    )
    return rng.choice(forms)()


def _lists_doc(rng: random.Random) -> list[str]:
    return [_list_line(rng) for _ in range(3)]


# (kind, share of general_docs, generator of the document's lines). The shares follow what
# the skills need at this model size: experiments/dense_skills.py took the first 4M-parameter
# base (commit 6321d15) from 2% to 63% on two-digit sums and from 0% to 97% on sorting with
# 12,000 extra documents of them. The third base (commit 6ab48f9) had 10,000 of these
# documents with sums in six phrasings and still probed at 8% on sums and 48% on sorting.
# The fourth (7ed6d3b) had about 100,000 lines of ``a + b = c`` or ``a - b = c`` and probed
# at 80% on them, but at 1% on ``What is a + b?`` with the answer on the next line: the
# phrasing the chat asks in. The fifth (v5) turned about 57,000 of those lines into such
# worksheets (``_worksheet``) and half of the sorted lists too. Reversing or upper-casing
# a word is a fact about that word, learnt from enough sightings. The sixth (v6) moved 4
# points of share from arithmetic to sorting: its plain sums fell from 87% to 38%, its
# worksheets from 98% to 88%, and the sorting probes moved little (README.md). A seventh
# (experiments/results/v7/) gave arithmetic its 34% back (2 points each from spelling and
# sorting): sums recovered, facts fell, and the fine-tuned mean with them, so these shares
# stay v6's.
_GENERAL_KINDS: tuple[tuple[str, float, Callable[[random.Random], list[str]]], ...] = (
    ("arithmetic", 0.30, _arithmetic_doc),
    ("spelling", 0.26, _spelling_doc),
    ("sorting", 0.22, _sorting_doc),
    ("lists", 0.08, _lists_doc),
    ("dictionary", 0.065, _dictionary_doc),
    ("counting", 0.035, _counting_doc),
    ("numbers", 0.03, _numbers_doc),
    ("alphabet", 0.01, _alphabet_doc),
)


def split_fact_pairs(world: World, config: DataConfig) -> dict[str, list[tuple[int, str]]]:
    """Split the (person id, attribute) facts of non-held-out people into train/val/test.

    Corpus Q/A and every instruction family use only the train pairs; ``facts`` val/test ask
    about the other pairs, so those, like ``heldout_facts``, can only be answered from what
    pretraining stored.
    """
    pairs = [(p.id, a.key) for p in world.people if not p.heldout for a in ATTRIBUTES]
    return _split_keys(pairs, random.Random(f"facts-{world.seed}"), config, "facts")


def pretrain_corpus(world: World, config: DataConfig | None = None) -> list[Document]:
    """Every pretraining document, in a seeded shuffled order.

    Per person: ``bios_per_person`` biographies, ``capital_bios_per_person`` English ones
    with the facts in capitals, and a profile card in each of
    ``PROFILE_LAYOUTS`` per language and ``bilingual_per_person`` English/Chinese documents; about
    ``stories_per_person`` stories per language feature each person; each city lists its
    residents. ``qa_docs`` plain-text Q/A documents (both layouts) ask only about train facts
    (never held-out people), and ``general_docs`` documents teach what the tasks need: words,
    numbers, sums, spelling, sorting, counting.
    """
    config = config or DataConfig()
    rng = random.Random(f"corpus-{world.seed}")
    para = config.paraphrase
    docs = []
    for person in world.people:
        for lang in LANGS:
            docs += [_bio(person, lang, rng, para) for _ in range(config.bios_per_person)]
            if lang == "en":
                docs += [_capital_bio(person, rng, para)
                         for _ in range(config.capital_bios_per_person)]
            docs += [profile_card(person, lang, layout) for layout in PROFILE_LAYOUTS[lang]]
        docs += [_bilingual(person, rng, para) for _ in range(config.bilingual_per_person)]
    for lang in LANGS:
        for _ in range(config.stories_per_person * len(world.people) // 2):
            a, b = rng.sample(world.people, 2)
            docs.append(_story(a, b, lang, rng, para))
        docs += [_city_doc(world, city, lang, rng) for city in world.cities]
    train_pairs: dict[int, list[Attribute]] = {}
    for pid, key in split_fact_pairs(world, config)["train"]:
        train_pairs.setdefault(pid, []).append(ATTRIBUTE_BY_KEY[key])
    qa_people = sorted(train_pairs)
    for _ in range(config.qa_docs if qa_people else 0):
        pid = rng.choice(qa_people)
        attrs = rng.sample(train_pairs[pid], min(len(train_pairs[pid]), rng.randint(2, 4)))
        docs.append(_qa_doc(world.person(pid), attrs, rng.choice(LANGS), rng))
    for kind, share, generate in _GENERAL_KINDS:
        for _ in range(round(share * config.general_docs)):
            docs.append(Document(kind, "\n".join(generate(rng))))
    rng.shuffle(docs)
    return docs


# ---------------------------------------------------------------------------------------------
# Instruction data.

Turn = tuple[str, str]  # (role, content)
Key = Hashable  # what one example is about; no key is shared between splits


@dataclass(frozen=True)
class Example:
    """One instruction conversation; ``answer`` is the exact expected last reply."""

    task: str
    messages: tuple[Turn, ...]
    answer: str

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "messages": [{"role": role, "content": content} for role, content in self.messages],
            "task": self.task,
        }


def _chat(task: str, *turns: str, system: str | None = None) -> Example:
    """An example from alternating user/assistant texts; the last one is the answer."""
    messages = [("system", system)] if system is not None else []
    messages += [("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return Example(task, tuple(messages), turns[-1])


@dataclass
class TaskFamily:
    """The keys a family's questions are about, and how to ask about one key."""

    name: str
    keys: list[Key]
    render: Callable[[Key, random.Random], Example]


def _split_keys(
    keys: Sequence[Key], rng: random.Random, config: DataConfig, name: str
) -> dict[str, list[Key]]:
    """Shuffle, then the first keys are test, the next val, the rest train."""
    n_val, n_test = config.val_per_task, config.test_per_task
    if len(keys) < n_val + n_test + 1:
        raise ValueError(
            f"task {name!r}: only {len(keys)} distinct keys, cannot hold out "
            f"{n_val} val + {n_test} test"
        )
    keys = list(keys)
    rng.shuffle(keys)
    return {"test": keys[:n_test], "val": keys[n_test:n_test + n_val],
            "train": keys[n_test + n_val:]}


def _sample_keys(rng: random.Random, count: int, draw: Callable[[], Key]) -> list[Key]:
    """``count`` distinct keys from a space too big to list."""
    keys: dict[Key, None] = {}
    while len(keys) < count:
        keys[draw()] = None
    return list(keys)


def _facts_family(world: World, pairs: list[tuple[int, str]]) -> TaskFamily:
    def render(key: Key, rng: random.Random) -> Example:
        pid, attr_key = key
        person, attr, lang = world.person(pid), ATTRIBUTE_BY_KEY[attr_key], rng.choice(LANGS)
        return _chat("facts", question(person, attr, lang, rng),
                     person.facts[attr_key].text(lang))

    return TaskFamily("facts", list(pairs), render)


_OPS = {"+": Term("plus", "加"), "-": Term("minus", "减")}
_ARITHMETIC_QUESTIONS = {
    "en": ("What is {a} {sym} {b}?", "What is {a} {word} {b}?", "Calculate {a} {sym} {b}.",
           "{a} {sym} {b} = ?"),
    "zh": ("{a}{word}{b}等于多少？", "计算{a} {sym} {b}。", "{a} {sym} {b} 等于几？",
           "{a}{word}{b}是多少？"),
}


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def _arithmetic_question(a: int, op: str, b: int, lang: str, rng: random.Random) -> str:
    template = rng.choice(_ARITHMETIC_QUESTIONS[lang])
    return template.format(a=a, b=b, sym=op, word=_OPS[op].text(lang))


def _arithmetic_family() -> TaskFamily:
    """Addition and subtraction of numbers below 100; differences are never negative."""
    keys = [(a, "+", b) for a in range(100) for b in range(100)]
    keys += [(a, "-", b) for a in range(100) for b in range(a + 1)]

    def render(key: Key, rng: random.Random) -> Example:
        a, op, b = key
        return _chat("arithmetic", _arithmetic_question(a, op, b, rng.choice(LANGS), rng),
                     str(_apply(a, op, b)))

    return TaskFamily("arithmetic", keys, render)


_STRING_QUESTIONS = {
    ("reverse", "en"): ('Reverse the word "{w}".', 'Spell "{w}" backwards.',
                        'Write "{w}" backwards.'),
    ("reverse", "zh"): ("把单词“{w}”倒过来写。", "“{w}”倒过来怎么写？"),
    ("upper", "en"): ('Write "{w}" in uppercase.', 'Convert "{w}" to capital letters.',
                      'What is "{w}" in uppercase?'),
    ("upper", "zh"): ("把“{w}”改成大写字母。", "“{w}”的大写形式是什么？"),
}


def _string_op(op: str, word: str) -> str:
    return word[::-1] if op == "reverse" else word.upper()


def _string_question(op: str, word: str, lang: str, rng: random.Random) -> str:
    return rng.choice(_STRING_QUESTIONS[op, lang]).format(w=word)


def _string_family() -> TaskFamily:
    keys = [(op, w) for op in ("reverse", "upper") for w in SPELLING_WORDS]

    def render(key: Key, rng: random.Random) -> Example:
        op, word = key
        return _chat("string", _string_question(op, word, rng.choice(LANGS), rng),
                     _string_op(op, word))

    return TaskFamily("string", keys, render)


_SORT_QUESTIONS = {
    ("numbers", "up", "en"): ("Sort these numbers from smallest to largest: {items}",
                              "Put these numbers in ascending order: {items}"),
    ("numbers", "down", "en"): ("Sort these numbers from largest to smallest: {items}",
                                "Put these numbers in descending order: {items}"),
    ("words", "up", "en"): ("Sort these words alphabetically: {items}",
                            "Put these words in alphabetical order: {items}"),
    ("numbers", "up", "zh"): ("把这些数从小到大排列：{items}", "按从小到大的顺序排列：{items}"),
    ("numbers", "down", "zh"): ("把这些数从大到小排列：{items}", "按从大到小的顺序排列：{items}"),
    ("words", "up", "zh"): ("把这些单词按字母顺序排列：{items}",),
}


def _sort_question(
    kind: str, direction: str, shown: Sequence[Any], lang: str, rng: random.Random
) -> str:
    template = rng.choice(_SORT_QUESTIONS[kind, direction, lang])
    return template.format(items=", ".join(map(str, shown)))


def _sorted_answer(items: Sequence[Any], direction: str) -> str:
    return ", ".join(map(str, sorted(items, reverse=direction == "down")))


def _sort_family(rng: random.Random, count: int) -> TaskFamily:
    """Sort 3-5 numbers (either direction) or words; a key is the sorted items."""

    def draw() -> Key:
        size = rng.randint(3, 5)
        if rng.random() < 0.6:
            return ("numbers", rng.choice(("up", "down")), tuple(sorted(rng.sample(range(100),
                                                                                   size))))
        return ("words", "up", tuple(sorted(rng.sample(SPELLING_WORDS, size))))

    def render(key: Key, rng: random.Random) -> Example:
        kind, direction, items = key
        shown = list(items)
        rng.shuffle(shown)
        return _chat("sort", _sort_question(kind, direction, shown, rng.choice(LANGS), rng),
                     _sorted_answer(items, direction))

    return TaskFamily("sort", _sample_keys(rng, count, draw), render)


_COUNT_QUESTIONS = {
    ("letters", "en"): ('How many letters are in the word "{w}"?',
                        'How many letters does "{w}" have?'),
    ("letters", "zh"): ("单词“{w}”有几个字母？", "“{w}”一共有多少个字母？"),
    ("letter", "en"): ('How many times does the letter "{c}" appear in "{w}"?',
                       'Count the letter "{c}" in "{w}".'),
    ("letter", "zh"): ("字母“{c}”在“{w}”里出现了几次？", "“{w}”里有几个字母“{c}”？"),
    ("items", "en"): ("How many items are in this list: {items}?", "Count the items: {items}."),
    ("items", "zh"): ("这个清单里有几样东西：{items}？", "数一数有几样东西：{items}。"),
}


def _count_question(key: Key, lang: str, rng: random.Random) -> tuple[str, str]:
    """The question and its answer for a count key: ``("letters", word)``,
    ``("letter", word, letter)`` or ``("items", object indices)``."""
    template = rng.choice(_COUNT_QUESTIONS[key[0], lang])
    if key[0] == "letters":
        return template.format(w=key[1]), str(len(key[1]))
    if key[0] == "letter":
        return template.format(w=key[1], c=key[2]), str(key[1].count(key[2]))
    sep = ", " if lang == "en" else "、"
    return template.format(items=sep.join(OBJECTS[i].text(lang) for i in key[1])), str(len(key[1]))


def _count_family(rng: random.Random, count: int) -> TaskFamily:
    """Count the letters of a word, one letter in a word, or the items of a list."""
    letters_keys = [("letters", w) for w in SPELLING_WORDS]

    def draw() -> Key:
        if rng.random() < 0.5:
            word = rng.choice(SPELLING_WORDS)
            return ("letter", word, _letter_to_count(word, rng))
        return ("items", tuple(rng.sample(range(len(OBJECTS)), rng.randint(2, 8))))

    def render(key: Key, rng: random.Random) -> Example:
        return _chat("count", *_count_question(key, rng.choice(LANGS), rng))

    return TaskFamily("count", letters_keys + _sample_keys(rng, count, draw), render)


_TRANSLATE_QUESTIONS = {
    ("en2zh", "en"): ('Translate "{w}" into Chinese.', 'What is the Chinese word for "{w}"?'),
    ("en2zh", "zh"): ("“{w}”的中文是什么？", "把“{w}”翻译成中文。"),
    ("zh2en", "en"): ('Translate "{w}" into English.', 'What is the English word for "{w}"?'),
    ("zh2en", "zh"): ("“{w}”的英文是什么？", "把“{w}”翻译成英文。"),
}


def _translate_question(direction: str, term: Term, lang: str, rng: random.Random) -> str:
    source = term.en if direction == "en2zh" else term.zh
    return rng.choice(_TRANSLATE_QUESTIONS[direction, lang]).format(w=source)


def _translation(direction: str, term: Term) -> str:
    return term.zh if direction == "en2zh" else term.en


def _translate_family() -> TaskFamily:
    """A key is a dictionary entry, asked in either direction, so a val/test word is never
    translated in train, not even the other way round."""
    keys = list(range(len(DICTIONARY)))

    def render(key: Key, rng: random.Random) -> Example:
        direction, term = rng.choice(("en2zh", "zh2en")), DICTIONARY[key]
        return _chat("translate", _translate_question(direction, term, rng.choice(LANGS), rng),
                     _translation(direction, term))

    return TaskFamily("translate", keys, render)


SYSTEM_PROMPTS = {
    "zh": Term("Always answer in Chinese.", "请用中文回答。"),
    "en": Term("Always answer in English.", "请用英文回答。"),
    "upper": Term("Answer in uppercase letters only.", "只用大写英文字母回答。"),
    "json": Term('Answer in JSON of the form {"answer": "..."}.',
                 '用JSON格式回答，形如 {"answer": "..."}。'),
}


def _system_format_family(
    world: World, fact_pairs: list[tuple[int, str]], translate_keys: list[Key],
    rng: random.Random, arithmetic_count: int,
) -> TaskFamily:
    """Obey the system prompt: the same content, answered in a language, case or JSON.

    ``zh``: an English question answered in Chinese. ``en``: a Chinese question answered in
    English. ``upper``: an English word, in capitals. ``json``: ``{"answer": "..."}``.
    """
    keys: list[Key] = []
    for pid, attr_key in fact_pairs:
        styles = ("zh", "en", "json") if ATTRIBUTE_BY_KEY[attr_key].is_number else (
            "zh", "en", "json", "upper")
        keys += [(style, "fact", pid, attr_key) for style in styles]
    keys += [("upper", "word", i) for i in translate_keys]
    keys += _sample_keys(rng, arithmetic_count, lambda: (
        "json", "sum", *sorted((rng.randint(0, 99), rng.randint(0, 99)), reverse=True)))

    def render(key: Key, rng: random.Random) -> Example:
        style, kind = key[0], key[1]
        system = SYSTEM_PROMPTS[style].text(rng.choice(LANGS))
        if kind == "fact":
            person, attr = world.person(key[2]), ATTRIBUTE_BY_KEY[key[3]]
            lang = {"zh": "en", "en": "zh", "upper": "en"}.get(style, rng.choice(LANGS))
            value = person.facts[attr.key]
            text, answer = question(person, attr, lang, rng), value.text(lang)
            if style in ("zh", "en"):
                answer = value.text(style)
        elif kind == "word":
            term = DICTIONARY[key[2]]
            text = _translate_question("zh2en", term, rng.choice(LANGS), rng)
            answer = term.en
        else:
            a, b = key[2], key[3]
            op = rng.choice(("+", "-"))
            text, answer = (_arithmetic_question(a, op, b, rng.choice(LANGS), rng),
                            str(_apply(a, op, b)))
        if style == "upper":
            answer = answer.upper()
        if style == "json":
            answer = json.dumps({"answer": answer}, ensure_ascii=False)
        return _chat("system_format", text, answer, system=system)

    return TaskFamily("system_format", keys, render)


_MULTI_TURN_FOLLOW_UPS = {
    "arith": {"+": Term("Now add {c} to that.", "再加{c}呢？"),
              "-": Term("Now subtract {c} from that.", "再减{c}呢？")},
    "translate": Term('And "{w}"?', "那“{w}”呢？"),
    "string": Term("Now write that in uppercase.", "再把它改成大写。"),
}


def _multi_turn_family(
    world: World, fact_pairs: list[tuple[int, str]], translate_keys: list[Key],
    string_keys: list[Key], rng: random.Random, sampled_count: int,
) -> TaskFamily:
    """A second question that only makes sense with the first turn in view."""
    by_person: dict[int, list[str]] = {}
    for pid, attr_key in fact_pairs:
        by_person.setdefault(pid, []).append(attr_key)
    keys: list[Key] = [
        ("facts", pid, a1, a2)
        for pid, attrs in by_person.items() for a1 in attrs for a2 in attrs if a1 != a2
    ]
    keys += [("string", w) for op, w in string_keys if op == "reverse"]

    def draw_arith() -> Key:
        a, b, c = rng.randint(0, 99), rng.randint(0, 99), rng.randint(1, 20)
        op = rng.choice(("+", "-"))
        if op == "-":
            a, b = max(a, b), min(a, b)
        op2 = "-" if _apply(a, op, b) >= c and rng.random() < 0.5 else "+"
        return ("arith", a, op, b, op2, c)

    keys += _sample_keys(rng, sampled_count, draw_arith)

    def draw_translate() -> Key:
        return ("translate", rng.choice(("en2zh", "zh2en")), *rng.sample(translate_keys, 2))

    keys += _sample_keys(rng, sampled_count, draw_translate)

    def render(key: Key, rng: random.Random) -> Example:
        lang = rng.choice(LANGS)
        if key[0] == "facts":
            person = world.person(key[1])
            first, second = ATTRIBUTE_BY_KEY[key[2]], ATTRIBUTE_BY_KEY[key[3]]
            follow = _render(rng.choice(second.follow_ups[lang]), person, second, lang,
                             person.name.text(lang))
            return _chat("multi_turn", question(person, first, lang, rng),
                         person.facts[first.key].text(lang), follow,
                         person.facts[second.key].text(lang))
        if key[0] == "arith":
            _, a, op, b, op2, c = key
            first = _apply(a, op, b)
            follow = _MULTI_TURN_FOLLOW_UPS["arith"][op2].text(lang).format(c=c)
            return _chat("multi_turn", _arithmetic_question(a, op, b, lang, rng), str(first),
                         follow, str(_apply(first, op2, c)))
        if key[0] == "translate":
            _, direction, i, j = key
            first, second = DICTIONARY[i], DICTIONARY[j]
            shown = second.en if direction == "en2zh" else second.zh
            follow = _MULTI_TURN_FOLLOW_UPS["translate"].text(lang).format(w=shown)
            return _chat("multi_turn", _translate_question(direction, first, lang, rng),
                         _translation(direction, first), follow, _translation(direction, second))
        word = key[1]
        return _chat("multi_turn", _string_question("reverse", word, lang, rng), word[::-1],
                     _MULTI_TURN_FOLLOW_UPS["string"].text(lang), word[::-1].upper())

    return TaskFamily("multi_turn", keys, render)


def _draw_examples(
    family: TaskFamily, keys: Sequence[Key], count: int, rng: random.Random,
    seen: set[tuple[Turn, ...]],
) -> list[Example]:
    """``count`` examples never seen before, visiting the keys in shuffled rounds.

    Rounds spread the examples evenly over the keys; ``seen`` spans all splits, so no
    conversation is in two of them.
    """
    examples: list[Example] = []
    queue: list[Key] = []
    for _ in range(50 * count + len(keys)):
        if len(examples) == count:
            break
        if not queue:
            queue = list(keys)
            rng.shuffle(queue)
        example = family.render(queue.pop(), rng)
        if example.messages not in seen:
            seen.add(example.messages)
            examples.append(example)
    if len(examples) < count:
        raise ValueError(
            f"task {family.name!r}: only {len(examples)} distinct examples from {len(keys)} "
            f"keys, asked for {count}; lower the count in DataConfig"
        )
    return examples


def instruction_splits(world: World, config: DataConfig | None = None) -> dict[str, list[Example]]:
    """The train/val/test instruction examples and the ``heldout_facts`` questions.

    Each family's keys are split before any example is drawn, so val/test ask about things
    (facts, words, sums) that no train example of that family asks about.
    """
    config = config or DataConfig()
    rng = random.Random(f"instructions-{world.seed}")
    fact_split = split_fact_pairs(world, config)
    per_task = config.train_per_task + config.val_per_task + config.test_per_task
    base = {
        "facts": _facts_family(world, [p for s in SPLITS for p in fact_split[s]]),
        "arithmetic": _arithmetic_family(),
        "string": _string_family(),
        "sort": _sort_family(rng, 4 * per_task),
        "count": _count_family(rng, 4 * per_task),
        "translate": _translate_family(),
    }
    key_splits = {"facts": fact_split}
    key_splits |= {
        name: _split_keys(family.keys, rng, config, name)
        for name, family in base.items() if name != "facts"
    }
    # The composite families reuse only train facts and train words, so facts and
    # translate val/test stay unseen in every train example.
    families = dict(base)
    families["system_format"] = _system_format_family(
        world, fact_split["train"], key_splits["translate"]["train"], rng, per_task)
    families["multi_turn"] = _multi_turn_family(
        world, fact_split["train"], key_splits["translate"]["train"],
        key_splits["string"]["train"], rng, per_task)
    for name in ("system_format", "multi_turn"):
        key_splits[name] = _split_keys(families[name].keys, rng, config, name)

    seen: set[tuple[Turn, ...]] = set()
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for name in TASKS:
        counts = {
            "test": config.test_per_task, "val": config.val_per_task,
            "train": config.train_facts if name == "facts" else config.train_per_task,
        }
        for split in ("test", "val", "train"):
            splits[split] += _draw_examples(families[name], key_splits[name][split],
                                            counts[split], rng, seen)
    rng.shuffle(splits["train"])
    splits[HELDOUT_TASK] = []
    for person in world.people:
        if person.heldout:
            for attr in ATTRIBUTES:
                for lang in LANGS:
                    splits[HELDOUT_TASK].append(_chat(
                        HELDOUT_TASK, question(person, attr, lang, rng),
                        person.facts[attr.key].text(lang)))
    return splits


# ---------------------------------------------------------------------------------------------
# Files.


def _jsonl(rows: Sequence[dict[str, Any]]) -> bytes:
    """One sorted-key JSON object per line, UTF-8, "\\n" newlines: byte-stable output."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows]
    return "".join(lines).encode("utf-8")


def write_dataset(
    out_dir: str | Path, seed: int = DEFAULT_SEED, config: DataConfig | None = None
) -> dict[str, Path]:
    """Generate the world and write every data file; returns file name -> path.

    Files: ``world.json``, ``corpus.jsonl`` (``{"kind", "text"}`` per document),
    ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and ``heldout_facts.jsonl``
    (``{"messages", "task", "answer"}`` per conversation). The same seed and config always
    give the same bytes.
    """
    config = config or DataConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    world = make_world(seed, config)
    contents = {
        "world.json": (json.dumps(world_to_dict(world), ensure_ascii=False, sort_keys=True,
                                  indent=1) + "\n").encode("utf-8"),
        "corpus.jsonl": _jsonl([{"kind": d.kind, "text": d.text}
                                for d in pretrain_corpus(world, config)]),
    }
    for split, examples in instruction_splits(world, config).items():
        contents[f"{split}.jsonl"] = _jsonl([ex.to_json() for ex in examples])
    paths = {}
    for name, data in contents.items():
        paths[name] = out / name
        paths[name].write_bytes(data)
    return paths


def load_corpus(path: str | Path) -> list[str]:
    """The document texts of a ``corpus.jsonl``, with the file and line of any bad record."""
    path = Path(path)
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise ValueError(f"{path}: line {number}: expected an object with a string 'text'")
        texts.append(record["text"])
    return texts
