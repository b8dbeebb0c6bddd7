"""The normaliser, per language: each expected text is what a careful speaker of the language says.

The expectations were written by hand from each language's conventions (decimal comma,
24-hour clock, date order, currency and unit plurals, ordinal agreement), not taken
from the code's output.
"""

from __future__ import annotations

import pytest

from wyoming_qwen3tts.text import normalize

ENGLISH = [
    ("It is 42.", "It is forty-two."),
    ("1,234 people", "one thousand two hundred and thirty-four people"),
    ("3.5 kg", "three point five kilograms"),
    ("It costs $12.50.", "It costs twelve dollars and fifty cents."),
    ("€1", "one euro"),
    ("£3.20", "three pounds and twenty pence"),
    ("15% off", "fifteen percent off"),
    ("at 14:30", "at fourteen thirty"),
    ("at 9:05", "at nine oh five"),
    ("at 7 pm", "at seven p.m."),
    ("7:30 am", "seven thirty a.m."),
    ("May 3, 2024", "May third, twenty twenty-four"),
    ("2024-05-03", "May third, twenty twenty-four"),
    ("on 3 May", "on the third of May"),
    ("the 21st floor", "the twenty-first floor"),
    ("21°C", "twenty-one degrees Celsius"),
    ("-5 °F", "minus five degrees Fahrenheit"),
    ("100 km/h", "one hundred kilometers per hour"),
    ("Call 555-123-4567.", "Call five five five, one two three, four five six seven."),
    ("e.g. apples", "for example apples"),
    ("Dr. Smith", "Doctor Smith"),
    ("in 1990", "in nineteen ninety"),
    ("0.5 l", "zero point five liters"),
    ("1 h", "one hour"),
    ("Tom & Jerry", "Tom and Jerry"),
    ("apples, pears, etc.", "apples, pears, et cetera."),
    ("Arrives Dec. 3rd.", "Arrives December third."),
    ("music of the 1990s", "music of the nineteen nineties"),
    ("3-5 days", "three to five days"),
    ("an MP3 file", "an MP three file"),
    ("we are #1", "we are number one"),
]

GERMAN = [
    (
        "Am 3. Mai um 14:30 kostet es 12,50 €.",
        "Am dritten Mai um vierzehn Uhr dreißig kostet es zwölf Euro fünfzig.",
    ),
    ("Es sind 21 Grad.", "Es sind einundzwanzig Grad."),
    ("3,5 kg", "drei Komma fünf Kilogramm"),
    ("1.234 Einwohner", "eintausendzweihundertvierunddreißig Einwohner"),
    ("15 %", "fünfzehn Prozent"),
    ("-3 °C", "minus drei Grad Celsius"),
    ("um 14.30 Uhr", "um vierzehn Uhr dreißig"),
    ("um 1 Uhr", "um ein Uhr"),
    ("um 9:05", "um neun Uhr fünf"),
    ("Am 03.05.2024", "Am dritten Mai zweitausendvierundzwanzig"),
    ("Heute ist der 24. Dezember.", "Heute ist der vierundzwanzigste Dezember."),
    ("Der 2. Platz", "Der zweite Platz"),
    ("z. B. Äpfel", "zum Beispiel Äpfel"),
    ("1 €", "ein Euro"),
    ("ca. 5 km", "circa fünf Kilometer"),
    ("im Jahr 1990", "im Jahr neunzehnhundertneunzig"),
    ("Ruf 0170 1234567 an.", "Ruf null eins sieben null, eins zwei drei vier fünf sechs sieben an."),
    ("1 h", "eine Stunde"),
    ("2,5 Stunden", "zwei Komma fünf Stunden"),
    ("Nr. 5", "Nummer fünf"),
    ("0,5 l", "null Komma fünf Liter"),
    ("Er wohnt in der Hauptstr. 3.", "Er wohnt in der Hauptstraße drei."),
    ("1 Flasche und 1 Liter", "eine Flasche und ein Liter"),
    ("3-4 Tage", "drei bis vier Tage"),
    ("von 9-17 Uhr", "von neun bis siebzehn Uhr"),
    ("Das kostet 1.299,00 €.", "Das kostet eintausendzweihundertneunundneunzig Euro."),
    ("am 3.5. um 8 Uhr", "am dritten Mai um acht Uhr"),
    ("Version 3.5.", "Version drei Komma fünf."),
]

FRENCH = [
    ("Le 1er mai", "Le premier mai"),
    ("à 14h30", "à quatorze heures trente"),
    ("à 14:00", "à quatorze heures"),
    ("à 1h", "à une heure"),
    ("12,50 €", "douze euros cinquante"),
    ("1 €", "un euro"),
    ("3,5 km", "trois virgule cinq kilomètres"),
    ("15 %", "quinze pour cent"),
    ("-5 °C", "moins cinq degrés Celsius"),
    ("1 234 habitants", "mille deux cent trente-quatre habitants"),
    (
        "Appelez le 01 23 45 67 89.",
        "Appelez le zéro un, vingt-trois, quarante-cinq, soixante-sept, quatre-vingt-neuf.",
    ),
    ("le 3 mai 2024", "le trois mai deux mille vingt-quatre"),
    ("le 03/05/2024", "le trois mai deux mille vingt-quatre"),
    ("le 2e étage", "le deuxième étage"),
    ("la 1re fois", "la première fois"),
    ("M. Dupont", "Monsieur Dupont"),
    ("71 ans", "soixante et onze ans"),
    ("80 km/h", "quatre-vingts kilomètres heure"),
    ("3,14", "trois virgule quatorze"),
    ("1 h", "une heure"),
    ("3-5 jours", "trois à cinq jours"),
]

SPANISH = [
    ("El 3 de mayo de 2024", "El tres de mayo de dos mil veinticuatro"),
    ("a las 14:30", "a las catorce y treinta"),
    ("a la 1:15", "a la una y quince"),
    ("21 €", "veintiún euros"),
    ("12,50 €", "doce euros con cincuenta"),
    ("1 €", "un euro"),
    ("15 %", "quince por ciento"),
    ("3,5 km", "tres coma cinco kilómetros"),
    ("21 °C", "veintiún grados Celsius"),
    ("-2 °C", "menos dos grados Celsius"),
    ("1.500 libros", "mil quinientos libros"),
    ("la 2.ª vez", "la segunda vez"),
    ("el 1.º puesto", "el primer puesto"),
    ("el 03/05/2024", "el tres de mayo de dos mil veinticuatro"),
    ("Sr. García", "señor García"),
    ("1 h", "una hora"),
    ("0,5 l", "cero coma cinco litros"),
    ("Tengo 21 años.", "Tengo veintiún años."),
    ("p. ej. naranjas", "por ejemplo naranjas"),
    ("2024-05-03", "tres de mayo de dos mil veinticuatro"),
    ("1 hora y 1 día", "una hora y un día"),
    ("500 personas", "quinientas personas"),
    ("31 días", "treinta y un días"),
]

ITALIAN = [
    ("Il 3 maggio", "Il tre maggio"),
    ("Il 1° maggio", "Il primo maggio"),
    ("alle 14:30", "alle quattordici e trenta"),
    ("alle 9:05", "alle nove e cinque"),
    ("12,50 €", "dodici euro e cinquanta"),
    ("1 €", "un euro"),
    ("15 %", "quindici per cento"),
    ("3,5 km", "tre virgola cinque chilometri"),
    ("21 °C", "ventuno gradi Celsius"),
    ("-4 °C", "meno quattro gradi Celsius"),
    ("1.234 abitanti", "milleduecentotrentaquattro abitanti"),
    ("il 2º posto", "il secondo posto"),
    ("la 1ª volta", "la prima volta"),
    ("1 h", "un'ora"),
    ("il 03/05/2024", "il tre maggio duemilaventiquattro"),
    ("mele, pere ecc.", "mele, pere eccetera."),
    ("Sig. Rossi", "signor Rossi"),
    ("2 l", "due litri"),
    ("100 km/h", "cento chilometri orari"),
    ("0,5", "zero virgola cinque"),
    ("1 casa, 1 ora, 1 libro", "una casa, un'ora, un libro"),
]

PORTUGUESE = [
    ("3 de maio de 2024", "três de maio de dois mil e vinte e quatro"),
    ("1º de maio", "primeiro de maio"),
    ("às 14h30", "às catorze e trinta"),
    ("às 14h", "às catorze horas"),
    ("à 1h", "à uma hora"),
    ("R$ 10,00", "dez reais"),
    ("R$ 1,50", "um real e cinquenta"),
    ("12,50 €", "doze euros e cinquenta"),
    ("15%", "quinze por cento"),
    ("3,5 km", "três vírgula cinco quilômetros"),
    ("2 h", "duas horas"),
    ("a 1ª vez", "a primeira vez"),
    ("o 2º lugar", "o segundo lugar"),
    ("-3 °C", "menos três graus Celsius"),
    ("1 °C", "um grau Celsius"),
    ("1.000 pessoas", "mil pessoas"),
    ("Sr. Silva", "senhor Silva"),
    ("03/05/2024", "três de maio de dois mil e vinte e quatro"),
    ("2 kg", "dois quilos"),
    ("0,5 l", "zero vírgula cinco litros"),
    ("2 pessoas", "duas pessoas"),
    ("200 pessoas", "duzentas pessoas"),
    ("Custa R$ 1.299,00.", "Custa mil duzentos e noventa e nove reais."),
]

RUSSIAN = [
    ("5 ₽", "пять рублей"),
    ("21 ₽", "двадцать один рубль"),
    ("22 ₽", "двадцать два рубля"),
    ("12,50 ₽", "двенадцать рублей пятьдесят копеек"),
    ("1,5 км", "одна целая пять десятых километра"),
    ("в 14:30", "в четырнадцать тридцать"),
    ("в 9:05", "в девять ноль пять"),
    ("в 2024 году", "в две тысячи двадцать четвёртом году"),
    ("3 мая 2024 года", "третьего мая две тысячи двадцать четвёртого года"),
    ("Сегодня 3 мая.", "Сегодня третье мая."),
    ("15 %", "пятнадцать процентов"),
    ("21 °C", "двадцать один градус Цельсия"),
    ("-5 °C", "минус пять градусов Цельсия"),
    ("2-й этаж", "второй этаж"),
    ("5 кг", "пять килограммов"),
    ("1000 рублей", "тысяча рублей"),
    ("т. е. так", "то есть так"),
    ("яблоки и т. д.", "яблоки и так далее."),
    ("2 км", "два километра"),
    ("1 мин", "одна минута"),
    ("1 лампа", "одна лампа"),
    ("2 книги и 2 дня", "две книги и два дня"),
    ("22 лампы", "двадцать две лампы"),
]

JAPANESE = [
    ("2024年5月3日", "二千二十四年五月三日"),
    ("14:30に", "十四時三十分に"),
    ("1,200円", "千二百円"),
    ("¥500", "五百円"),
    ("$5", "五ドル"),
    ("50%", "五十パーセント"),
    ("21°C", "二十一度"),
    ("-3°C", "マイナス三度"),
    ("5km", "五キロメートル"),
    ("3.5kg", "三点五キログラム"),
    ("10000人", "一万人"),
    ("第3回", "第三回"),
    ("2024-05-03", "二千二十四年五月三日"),
    ("60km/h", "時速六十キロメートル"),
    ("03-1234-5678", "ゼロ三、一二三四、五六七八"),
    ("3時", "三時"),
    ("100円", "百円"),
    ("3-5日", "三から五日"),
]

KOREAN = [
    ("2024년 5월 3일", "이천이십사년 오월 삼일"),
    ("6월", "유월"),
    ("10월", "시월"),
    ("14:30", "열네 시 삼십 분"),
    ("3시", "세 시"),
    ("1,200원", "천이백원"),
    ("₩5,000", "오천 원"),
    ("$5", "오 달러"),
    ("50%", "오십 퍼센트"),
    ("3명", "세 명"),
    ("1번째", "첫 번째"),
    ("2개", "두 개"),
    ("20살", "스무 살"),
    ("21°C", "이십일 도"),
    ("-5°C", "영하 오 도"),
    ("5km", "오 킬로미터"),
    ("010-1234-5678", "공일공, 일이삼사, 오육칠팔"),
    ("3.5", "삼 점 오"),
    ("2시간", "두 시간"),
    ("10000", "만"),
]

CHINESE = [
    ("2024年5月3日", "二零二四年五月三日"),
    ("14:30", "十四点三十分"),
    ("2:00", "两点"),
    ("14:05", "十四点零五分"),
    ("¥12.50", "十二点五元"),
    ("$5", "五美元"),
    ("50%", "百分之五十"),
    ("21°C", "二十一摄氏度"),
    ("-5°C", "零下五摄氏度"),
    ("2个人", "两个人"),
    ("3.14", "三点一四"),
    ("10000", "一万"),
    ("105", "一百零五"),
    ("13812345678", "幺三八幺二三四五六七八"),
    ("5km", "五公里"),
    ("2公斤", "两公斤"),
    ("12", "十二"),
    ("1001", "一千零一"),
    ("100000", "十万"),
    ("第3名", "第三名"),
    ("3-5天", "三到五天"),
]


def _cases(language: str, table: list[tuple[str, str]]) -> list:
    return [pytest.param(language, written, spoken, id=f"{language}:{written}") for written, spoken in table]


ALL_CASES = [
    *_cases("en", ENGLISH),
    *_cases("de", GERMAN),
    *_cases("fr", FRENCH),
    *_cases("es", SPANISH),
    *_cases("it", ITALIAN),
    *_cases("pt", PORTUGUESE),
    *_cases("ru", RUSSIAN),
    *_cases("ja", JAPANESE),
    *_cases("ko", KOREAN),
    *_cases("zh", CHINESE),
]


@pytest.mark.parametrize(("language", "written", "spoken"), ALL_CASES)
def test_normalize(language: str, written: str, spoken: str) -> None:
    assert normalize(written, language) == spoken


@pytest.mark.parametrize(
    "table", [ENGLISH, GERMAN, FRENCH, SPANISH, ITALIAN, PORTUGUESE, RUSSIAN, JAPANESE, KOREAN, CHINESE]
)
def test_every_language_has_at_least_fifteen_cases(table: list[tuple[str, str]]) -> None:
    assert len(table) >= 15
