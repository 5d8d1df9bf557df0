"""Vocabulary: every word, name and number of the world, in English and in Chinese.

A ``Term`` is one word or name in both languages; ``LANGS`` are the two languages
everything is written in. Every English word and every Chinese word appears once in the
dictionary, so a translation question has exactly one right answer. The dictionary's
single words are also the material of the spelling, sorting and counting skills
(``SPELLING_WORDS``). The parts that city names and people's names are built from are
listed here too, and numbers are written out in words in both languages
(``number_words``).
"""

from __future__ import annotations

from dataclasses import dataclass

LANGS = ("en", "zh")


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
