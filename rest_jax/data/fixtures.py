r"""Small copies of the data sets in their exact upstream file formats, for tests and smoke configs.

  path = fixtures.write("gsm8k", tmp_dir)   # tmp_dir/grade_school_math/data/{train,test}.jsonl
  records = rest_jax.data.load("gsm8k", path)

Each split has 4-6 records (3 in MBPP's sanitized prompt split) in the real data set's style (GSM8K calculator
notes and "#### n", MATH's \boxed{...}, MBPP's \r\n code, APPS's "-----Input-----" statements). The code data
sets' reference solutions pass their tests (APPS: standard-input and call-based problems, and one with neither
solutions nor tests, as some upstream problems are). Some fields carry non-ASCII text (GSM8K's ’, APPS's —) to catch
encoding mistakes.
"""

import json
import os
from typing import Any

from rest_jax.data import _apps_fixture

_GSM8K = {
    "train": [
        ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
         "clips did Natalia sell altogether in April and May?",
         "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
         "April and May.\n#### 72"),
        ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she "
         "earn?",
         "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = "
         "$<<0.2*50=10>>10.\n#### 10"),
        ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her "
         "parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents. How "
         "much more money does Betty need to buy the wallet?",
         "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\nBetty's grandparents gave her 15 * 2 = "
         "$<<15*2=30>>30.\nThis means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5 more.\n#### 5"),
        ("James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
         "He writes each friend 3*2=<<3*2=6>>6 pages a week\nSo he writes 6*2=<<6*2=12>>12 pages every week\nThat "
         "means he writes 12*52=<<12*52=624>>624 pages a year\n#### 624"),
        ("José bakes 4 trays of crème brûlée with 6 ramekins on each tray. He sells each ramekin for €3. How many "
         "euros does he make if he sells all of them?",
         "José bakes 4*6=<<4*6=24>>24 ramekins.\nHe makes 24*3=€<<24*3=72>>72.\n#### 72"),
    ],
    "test": [
        ("Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her "
         "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck "
         "egg. How much in dollars does she make every day at the farmers' market?",
         "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day at the "
         "farmer’s market.\n#### 18"),
        ("A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?",
         "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total amount of fabric is 2+1=<<2+1=3>>3 bolts of "
         "fabric\n#### 3"),
        ("Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in $50,000 in repairs.  "
         "This increased the value of the house by 150%.  How much profit did he make?",
         "The cost of the house and repairs came out to 80,000+50,000=$<<80000+50000=130000>>130,000\nHe increased "
         "the value of the house by 80,000*1.5=<<80000*1.5=120000>>120,000\nSo the new value of the house is "
         "120,000+80,000=$<<120000+80000=200000>>200,000\nSo he made a profit of "
         "200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000"),
        ("James decides to run 3 sprints 3 times a week.  He runs 60 meters each sprint.  How many total meters does "
         "he run a week?",
         "He sprints 3*3=<<3*3=9>>9 times\nSo he runs 9*60=<<9*60=540>>540 meters\n#### 540"),
    ],
}

# (split, subject folder, file number, level, problem, solution); "type" follows from the subject folder.
_MATH = [
    ("train", "algebra", 2, "Level 1", r"What is the value of $\sqrt{36 \times \sqrt{16}}$?",
     r"Calculating from the inside out, $$\sqrt{36 \times \sqrt{16}} = \sqrt{36 \times 4} = \sqrt{144} = "
     r"\boxed{12}.$$"),
    ("train", "algebra", 10, "Level 3", r"If $2x - 3 = 7 - 3x$, what is $x$?",
     r"Adding $3x + 3$ to both sides gives $5x = 10$, so $x = \boxed{2}$."),
    ("train", "counting_and_probability", 1034, "Level 3",
     "How many ways are there to put 5 balls in 2 boxes if the balls are distinguishable and the boxes are "
     "distinguishable?",
     r"Each of the 5 balls can go in either of the 2 boxes, so there are $2^5 = \boxed{32}$ ways."),
    ("train", "geometry", 77, "Level ?",
     "In right triangle $ABC$, $\\angle C = 90^\\circ$, $AC = 6$ and $BC = 8$. What is $AB$?\n\n[asy]\n"
     "pair A, B, C;\nC = (0,0);\nA = (0,6);\nB = (8,0);\ndraw(A--B--C--A);\ndraw(rightanglemark(B,C,A,18));\n"
     "label(\"$A$\",A,NW);\nlabel(\"$B$\",B,SE);\nlabel(\"$C$\",C,SW);\n[/asy]",
     r"By the Pythagorean Theorem, $AB = \sqrt{AC^2 + BC^2} = \sqrt{36 + 64} = \sqrt{100} = \boxed{10}$."),
    ("train", "number_theory", 416, "Level 3", r"What is the remainder when $2^{100}$ is divided by 7?",
     r"Since $2^3 = 8 \equiv 1 \pmod 7$, we have $2^{100} = (2^3)^{33} \cdot 2 \equiv 2 \pmod 7$. The remainder is "
     r"$\boxed{2}$."),
    ("test", "algebra", 1234, "Level 3",
     r"If $f(x) = \frac{3x-2}{x-2}$, what is the value of $f(-2) +f(-1)+f(0)$? Express your answer as a common "
     "fraction.",
     r"$f(-2)+f(-1)+f(0)=\frac{3(-2)-2}{-2-2}+\frac{3(-1)-2}{-1-2}+\frac{3(0)-2}{0-2}=\frac{-8}{-4}+\frac{-5}{-3}+"
     r"\frac{-2}{-2}=2+\frac{5}{3}+1=\boxed{\frac{14}{3}}$"),
    ("test", "intermediate_algebra", 58, "Level 2", r"Find the minimum value of $x^2 + 8x + 21$ over all real $x$.",
     r"Completing the square, $x^2 + 8x + 21 = (x + 4)^2 + 5$, which is smallest at $x = -4$, where it equals "
     r"$\boxed{5}$."),
    ("test", "number_theory", 572, "Level 3", "How many positive whole-number divisors does 196 have?",
     r"First prime-factorize $196=2^2\cdot7^2$.  The prime factorization of any divisor of 196 cannot include any "
     r"primes other than 2 and 7.  We are free to choose either 0, 1, or 2 as the exponent of 2 in the prime "
     r"factorization of a divisor of 196.  Similarly, we may choose 0, 1, or 2 as the exponent of 7.  In total, "
     r"there are $3\times 3=9$ possibilities for the prime factorization of a divisor of 196.  Distinct prime "
     r"factorizations correspond to distinct integers, so there are $\boxed{9}$ divisors of 196."),
    ("test", "precalculus", 807, "Level 1",
     r"Compute $\begin{pmatrix} 2 & 3 \\ 7 & -1 \end{pmatrix} \begin{pmatrix} 1 & -5 \\ 0 & 4 \end{pmatrix}.$",
     "We have that\n" r"\[\begin{pmatrix} 2 & 3 \\ 7 & -1 \end{pmatrix} \begin{pmatrix} 1 & -5 \\ 0 & 4 \end{pmatrix} "
     r"= \begin{pmatrix} (2)(1) + (3)(0) & (2)(-5) + (3)(4) \\ (7)(1) + (-1)(0) & (7)(-5) + (-1)(4) \end{pmatrix} = "
     r"\boxed{\begin{pmatrix} 2 & 2 \\ 7 & -39 \end{pmatrix}}.\]"),
]
_MATH_TYPES = {"algebra": "Algebra", "counting_and_probability": "Counting & Probability", "geometry": "Geometry",
               "intermediate_algebra": "Intermediate Algebra", "number_theory": "Number Theory",
               "prealgebra": "Prealgebra", "precalculus": "Precalculus"}

_MATH500 = [
    {"problem": "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.  Enter your answer in "
                "the form $(r,\\theta),$ where $r > 0$ and $0 \\le \\theta < 2 \\pi.$",
     "solution": "We have that $r = \\sqrt{0^2 + 3^2} = 3.$  Also, if we draw the line connecting the origin and "
                 "$(0,3),$ this line makes an angle of $\\frac{\\pi}{2}$ with the positive $x$-axis.\n\n[asy]\n"
                 "unitsize(0.8 cm);\n\ndraw((-0.5,0)--(3.5,0));\ndraw((0,-0.5)--(0,3.5));\n"
                 "draw(arc((0,0),3,0,90),red,Arrow(6));\n\ndot((0,3), red);\nlabel(\"$(0,3)$\", (0,3), W);\n"
                 "dot((3,0), red);\n[/asy]\n\nTherefore, the polar coordinates are "
                 "$\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}.$",
     "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus", "level": 2,
     "unique_id": "test/precalculus/807.json"},
    {"problem": "If $f(x) = \\frac{3x-2}{x-2}$, what is the value of $f(-2) +f(-1)+f(0)$? Express your answer as a "
                "common fraction.",
     "solution": "$f(-2)+f(-1)+f(0)=\\frac{3(-2)-2}{-2-2}+\\frac{3(-1)-2}{-1-2}+\\frac{3(0)-2}{0-2}=\\frac{-8}{-4}+"
                 "\\frac{-5}{-3}+\\frac{-2}{-2}=2+\\frac{5}{3}+1=\\boxed{\\frac{14}{3}}$",
     "answer": "\\frac{14}{3}", "subject": "Algebra", "level": 3, "unique_id": "test/algebra/2584.json"},
    {"problem": "How many positive whole-number divisors does 196 have?",
     "solution": "First prime-factorize $196=2^2\\cdot7^2$.  Any divisor of 196 is $2^a 7^b$ with $a$ and $b$ each "
                 "0, 1, or 2, so there are $3\\times 3=\\boxed{9}$ divisors.",
     "answer": "9", "subject": "Number Theory", "level": 3, "unique_id": "test/number_theory/572.json"},
    {"problem": "What is the smallest positive perfect cube that can be written as the sum of three consecutive "
                "integers?",
     "solution": "The sum of three consecutive integers $k-1$, $k$, $k+1$ is $3k$, a multiple of 3. The smallest "
                 "positive perfect cube divisible by 3 is $3^3=\\boxed{27}$, which is $8+9+10$.",
     "answer": "27", "subject": "Number Theory", "level": 3, "unique_id": "test/number_theory/515.json"},
    {"problem": "Find the number of ordered pairs $(a,b)$ of integers such that $|a + bi| \\le 5.$",
     "solution": "The problem asks us to count the number of complex numbers that lie in or on the circle of radius "
                 "5 centered at the origin, with integer real and imaginary parts.  Counting lattice points column "
                 "by column for $a = -5, \\dots, 5$ gives $1 + 7 + 9 + 9 + 11 + 11 + 11 + 9 + 9 + 7 + 1 = "
                 "\\boxed{81}$ pairs.",
     "answer": "81", "subject": "Intermediate Algebra", "level": 5, "unique_id": "test/intermediate_algebra/232.json"},
]

# (task_id, full-release text, sanitized prompt, code, tests, test_setup_code, challenge tests, test_imports).
_MBPP = [
    (1, "Write a function to find the minimum cost path to reach (m, n) from (0, 0) for the given cost matrix "
        "cost[][] and a position (m, n) in cost[][].", None,
     "R = 3\r\nC = 3\r\ndef min_cost(cost, m, n): \r\n\ttc = [[0 for x in range(C)] for x in range(R)] \r\n"
     "\ttc[0][0] = cost[0][0] \r\n\tfor i in range(1, m+1): \r\n\t\ttc[i][0] = tc[i-1][0] + cost[i][0] \r\n"
     "\tfor j in range(1, n+1): \r\n\t\ttc[0][j] = tc[0][j-1] + cost[0][j] \r\n\tfor i in range(1, m+1): \r\n"
     "\t\tfor j in range(1, n+1): \r\n\t\t\ttc[i][j] = min(tc[i-1][j-1], tc[i-1][j], tc[i][j-1]) + cost[i][j] \r\n"
     "\treturn tc[m][n]",
     ["assert min_cost([[1, 2, 3], [4, 8, 2], [1, 5, 3]], 2, 2) == 8",
      "assert min_cost([[2, 3, 4], [5, 9, 3], [2, 6, 4]], 2, 2) == 12",
      "assert min_cost([[3, 4, 5], [6, 10, 4], [3, 7, 5]], 2, 2) == 16"], "", [], []),
    (2, "Write a function to find the similar elements from the given two tuple lists.",
     "Write a function to find the shared elements from the given two lists.",
     "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return (res) ",
     ["assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)",
      "assert similar_elements((1, 2, 3, 4),(5, 4, 3, 7)) == (3, 4)",
      "assert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14)"], "", [], []),
    (3, "Write a python function to identify non-prime numbers.",
     "Write a python function to identify non-prime numbers.",
     "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
     "        if n % i == 0:\r\n            result = True\r\n    return result",
     ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35) == True"],
     "", [], ["import math"]),
    (4, "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
     "Write a function to find the n largest integers from a given list of numbers, returned in descending order.",
     "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n"
     "  return largest_nums",
     ["assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] ",
      "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35]"], "", [], []),
    (11, "Write a python function to remove first and last occurrence of a given character from the string.",
     "Write a python function to remove first and last occurrence of a given character from the string.",
     "def remove_Occ(s,ch): \r\n    for i in range(len(s)): \r\n        if (s[i] == ch): \r\n"
     "            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    for i in range(len(s) - 1,-1,-1):  \r\n"
     "        if (s[i] == ch): \r\n            s = s[0 : i] + s[i + 1:] \r\n            break\r\n    return s ",
     ['assert remove_Occ("hello","l") == "heo"', 'assert remove_Occ("abcda","a") == "bcd"',
      'assert remove_Occ("PHP","P") == "H"'], "",
     ['assert remove_Occ("hellolloll","l") == "helollol"', 'assert remove_Occ("","l") == ""'], []),
    (12, "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
     "Write a function to sort a given matrix in ascending order according to the sum of its rows.",
     "def sort_matrix(M):\r\n    result = sorted(M, key=sum)\r\n    return result",
     ["assert sort_matrix([[1, 2, 3], [2, 4, 5], [1, 1, 1]])==[[1, 1, 1], [1, 2, 3], [2, 4, 5]]",
      "assert sort_matrix([[1, 2, 3], [-2, 4, -5], [1, -1, 1]])==[[-2, 4, -5], [1, -1, 1], [1, 2, 3]]",
      "assert sort_matrix([[5,8,9],[6,4,3],[2,1,4]])==[[2, 1, 4], [6, 4, 3], [5, 8, 9]]"], "", [], []),
    (14, "Write a python function to find the volume of a triangular prism.",
     "Write a python function to find the volume of a triangular prism.",
     "def find_Volume(l,b,h) : \r\n    return ((l * b * h) / 2) ",
     ["assert find_Volume(10,8,6) == 240", "assert find_Volume(3,2,2) == 6", "assert find_Volume(1,2,1) == 1"],
     "", [], []),
    (17, "Write a function to find the perimeter of a square.",
     "Write a function that returns the perimeter of a square given its side length as input.",
     "def square_perimeter(a):\r\n  perimeter=4*a\r\n  return perimeter",
     ["assert square_perimeter(10)==40", "assert square_perimeter(5)==20", "assert square_perimeter(4)==16"],
     "", [], []),
    (510, "Write a function to find the number of subsequences having product smaller than k for the given non "
          "negative array.", None,
     "def no_of_subsequences(arr, k): \r\n\tn = len(arr) \r\n\tdp = [[0 for i in range(n + 1)] \r\n"
     "\t\t\tfor j in range(k + 1)] \r\n\tfor i in range(1, k + 1): \r\n\t\tfor j in range(1, n + 1): \r\n"
     "\t\t\tdp[i][j] = dp[i][j - 1] \r\n\t\t\tif arr[j - 1] <= i and arr[j - 1] > 0: \r\n"
     "\t\t\t\tdp[i][j] += dp[i // arr[j - 1]][j - 1] + 1\r\n\treturn dp[k - 1][n]",
     ["assert no_of_subsequences([1,2,3,4], 10) == 11", "assert no_of_subsequences([4,8,7,2], 50) == 9",
      "assert no_of_subsequences([5,6,7,8], 15) == 4"], "", [], []),
    (511, "Write a python function to find minimum sum of factors of a given number.", None,
     "def find_Min_Sum(num): \r\n    sum = 0\r\n    i = 2\r\n    while(i * i <= num): \r\n"
     "        while(num % i == 0): \r\n            sum += i \r\n            num /= i \r\n        i += 1\r\n"
     "    sum += num \r\n    return sum",
     ["assert find_Min_Sum(12) == 7", "assert find_Min_Sum(105) == 15", "assert find_Min_Sum(2) == 2"], "", [], []),
    (557, "Write a function to toggle characters case in a string.",
     "Write a function to toggle the case of all characters in a string.",
     "def toggle_string(string):\r\n string1 = string.swapcase()\r\n return string1",
     ['assert toggle_string("Python")==("pYTHON")', 'assert toggle_string("Pangram")==("pANGRAM")',
      'assert toggle_string("LIttLE")==("liTTle")'], "", [], []),
    (566, "Write a function to get the sum of a non-negative integer.",
     "Write a function to get the sum of the digits of a non-negative integer.",
     "def sum_digits(n):\r\n  if n == 0:\r\n    return 0\r\n  else:\r\n    return n % 10 + sum_digits(int(n / 10))",
     ["assert sum_digits(345)==12", "assert sum_digits(12)==3", "assert sum_digits(97)==16"], "", [], []),
    (600, "Write a python function to check whether the given number is even or not using bitwise operator.",
     "Write a python function to check whether the given number is even or not.",
     "def is_Even(n) : \r\n    if (n^1 == n+1) :\r\n        return True; \r\n    else :\r\n        return False; ",
     ["assert is_Even(1) == False", "assert is_Even(2) == True", "assert is_Even(3) == False"], "", [], []),
    (602, "Write a python function to find the first repeated character in a given string.",
     "Write a python function to find the first repeated character in a given string.",
     "def first_repeated_char(str1):\r\n  for index,c in enumerate(str1):\r\n    if str1[:index+1].count(c) > 1:\r\n"
     "      return c \r\n  return \"None\"",
     ['assert first_repeated_char("abcabc") == "a"', 'assert first_repeated_char("abc") == "None"',
      'assert first_repeated_char("123123") == "1"'], "", [], []),
    (603, "Write a function to get a lucid number smaller than or equal to n.", None,
     "def get_ludic(n):\r\n\tludics = []\r\n\tfor i in range(1, n + 1):\r\n\t\tludics.append(i)\r\n\tindex = 1\r\n"
     "\twhile(index != len(ludics)):\r\n\t\tfirst_ludic = ludics[index]\r\n\t\tremove_index = index + first_ludic\r\n"
     "\t\twhile(remove_index < len(ludics)):\r\n\t\t\tludics.remove(ludics[remove_index])\r\n"
     "\t\t\tremove_index = remove_index + first_ludic - 1\r\n\t\tindex += 1\r\n\treturn ludics",
     ["assert get_ludic(10) == [1, 2, 3, 5, 7]", "assert get_ludic(25) == [1, 2, 3, 5, 7, 11, 13, 17, 23, 25]",
      "assert get_ludic(45) == [1, 2, 3, 5, 7, 11, 13, 17, 23, 25, 29, 37, 41, 43]"], "", [], []),
    (604, "Write a function to reverse words in a given string.",
     "Write a function to reverse words seperated by spaces in a given string.",
     "def reverse_words(s):\r\n        return ' '.join(reversed(s.split()))",
     ['assert reverse_words("python program")==("program python")',
      'assert reverse_words("java language")==("language java")',
      'assert reverse_words("indian man")==("man indian")'], "", [], []),
    (974, "Write a function to find the minimum total path sum in the given triangle.",
     "Write a function to find the minimum total path sum in the given triangle.",
     "def min_sum_path(A): \r\n\tmemo = [None] * len(A) \r\n\tn = len(A) - 1\r\n\tfor i in range(len(A[n])): \r\n"
     "\t\tmemo[i] = A[n][i] \r\n\tfor i in range(len(A) - 2, -1,-1): \r\n\t\tfor j in range( len(A[i])): \r\n"
     "\t\t\tmemo[j] = A[i][j] + min(memo[j], \r\n\t\t\t\t\t\t\t\t\tmemo[j + 1]) \r\n\treturn memo[0]",
     ["assert min_sum_path([[ 2 ], [3, 9 ], [1, 6, 7 ]]) == 6",
      "assert min_sum_path([[ 2 ], [3, 7 ], [8, 5, 6 ]]) == 10 ",
      "assert min_sum_path([[ 3 ], [6, 4 ], [5, 2, 7 ]]) == 9"], "", [], []),
]

_LAYOUTS = {"apps": ("tree", "jsonl")}


def names() -> list[str]:
  """Data sets `write` has fixtures for: all of `rest_jax.data.names()`."""
  return sorted(_WRITERS)


def write(name: str, root: str | os.PathLike[str], *, layout: str | None = None) -> str:
  """Writes the fixture of data set `name` under `root` in its upstream layout.

  Args:
    name: A data set name, see `names()`.
    root: Folder to write into (created if needed); data sets go to distinct subfolders, so one root can hold all.
    layout: For "apps": "tree" (default; the original release, APPS/{train,test}/<nnnn>/*) or "jsonl" (train.jsonl
      and test.jsonl as in codeparrot/apps). Both hold the same problems. Other data sets have one layout.

  Returns:
    The path to pass to `rest_jax.data.load(name, path)`.
  """
  if name not in _WRITERS:
    raise ValueError(f"no fixture for data set {name!r}; fixtures: {', '.join(names())}")
  layouts = _LAYOUTS.get(name, (None,))
  if layout is None:
    layout = layouts[0]
  if layout not in layouts:
    raise ValueError(f"{name} fixture: layout must be one of {layouts}, got {layout!r}")
  return _WRITERS[name](os.fspath(root), layout)


def apps_problems() -> dict[str, list[dict[str, Any]]]:
  """The APPS fixture's problems: split -> dicts with `solutions` and `input_output` as Python values (or None)."""
  return json.loads(json.dumps(_apps_fixture.PROBLEMS))


def _write_jsonl(file: str, rows: list[dict[str, Any]], *, ensure_ascii: bool = False) -> None:
  os.makedirs(os.path.dirname(file), exist_ok=True)
  with open(file, "w", encoding="utf-8", newline="\n") as f:
    f.writelines(json.dumps(row, ensure_ascii=ensure_ascii) + "\n" for row in rows)


def _write_json(file: str, value: Any, **kwargs: Any) -> None:
  os.makedirs(os.path.dirname(file), exist_ok=True)
  with open(file, "w", encoding="utf-8", newline="\n") as f:
    json.dump(value, f, **kwargs)


def _write_gsm8k(root: str, layout: None) -> str:
  del layout
  path = os.path.join(root, "grade_school_math", "data")
  for split, rows in _GSM8K.items():
    _write_jsonl(os.path.join(path, f"{split}.jsonl"), [{"question": q, "answer": a} for q, a in rows])
  return path


def _write_math(root: str, layout: None) -> str:
  del layout
  for split, subject, number, level, problem, solution in _MATH:
    _write_json(os.path.join(root, "MATH", split, subject, f"{number}.json"),
                {"problem": problem, "level": level, "type": _MATH_TYPES[subject], "solution": solution}, indent=4)
  return root  # The parent of MATH/, as after unpacking MATH.tar.


def _write_math500(root: str, layout: None) -> str:
  del layout
  file = os.path.join(root, "MATH-500", "test.jsonl")
  _write_jsonl(file, _MATH500, ensure_ascii=True)
  return file


def _write_mbpp(root: str, layout: None) -> str:
  del layout
  path = os.path.join(root, "mbpp")
  _write_jsonl(os.path.join(path, "mbpp.jsonl"), [
      {"text": text, "code": code, "task_id": task_id, "test_setup_code": setup, "test_list": tests,
       "challenge_test_list": challenge}
      for task_id, text, _, code, tests, setup, challenge, _ in _MBPP])
  return path


def _write_mbpp_sanitized(root: str, layout: None) -> str:
  del layout
  file = os.path.join(root, "mbpp", "sanitized-mbpp.json")
  _write_json(file, [
      {"source_file": "Benchmark Questions Verification V2.ipynb", "task_id": task_id, "prompt": prompt,
       "code": code.replace("\r\n", "\n"), "test_imports": imports, "test_list": tests}
      for task_id, _, prompt, code, tests, _, _, imports in _MBPP if prompt is not None], indent=1)
  return file


_APPS_JSONL_FIELDS = ("problem_id", "question", "solutions", "input_output", "difficulty", "url", "starter_code")


def _apps_jsonl_value(problem: dict[str, Any], field: str) -> Any:
  if field in ("solutions", "input_output"):  # JSON-encoded strings, "" where the release has no file.
    return "" if problem[field] is None else json.dumps(problem[field])
  return problem[field]


def _write_apps(root: str, layout: str) -> str:
  if layout == "jsonl":
    path = os.path.join(root, "apps")
    for split, problems in _apps_fixture.PROBLEMS.items():
      _write_jsonl(os.path.join(path, f"{split}.jsonl"), [
          {field: _apps_jsonl_value(problem, field) for field in _APPS_JSONL_FIELDS} for problem in problems])
    return path
  path = os.path.join(root, "APPS")
  for split, problems in _apps_fixture.PROBLEMS.items():
    for problem in problems:
      folder = os.path.join(path, split, f"{problem['problem_id']:04d}")
      os.makedirs(folder, exist_ok=True)
      with open(os.path.join(folder, "question.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(problem["question"])
      _write_json(os.path.join(folder, "metadata.json"), {"difficulty": problem["difficulty"], "url": problem["url"]})
      for field in ("solutions", "input_output"):
        if problem[field] is not None:
          _write_json(os.path.join(folder, f"{field}.json"), problem[field])
      if problem["starter_code"]:
        with open(os.path.join(folder, "starter_code.py"), "w", encoding="utf-8", newline="\n") as f:
          f.write(problem["starter_code"])
  return path


_WRITERS = {"apps": _write_apps, "gsm8k": _write_gsm8k, "math": _write_math, "math500": _write_math500,
            "mbpp": _write_mbpp, "mbpp_sanitized": _write_mbpp_sanitized}
