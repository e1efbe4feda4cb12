"""The APPS fixture's problems: real-looking statements (Codeforces, LeetCode, Codewars) with passing solutions."""

from typing import Any

_POCKETS = """Polycarp has $n$ coins, the value of the $i$-th coin is $a_i$. Polycarp wants to distribute all the \
coins between his pockets, but he cannot put two coins with the same values into the same pocket.

For example, if Polycarp has got six coins represented as an array $a = [1, 2, 4, 3, 3, 2]$, he can distribute the \
coins into two pockets as follows: $[1, 2, 3], [2, 3, 4]$.

Polycarp wants to distribute all the coins with the minimum number of used pockets. Help him to do that.


-----Input-----

The first line of the input contains one integer $n$ ($1 \\le n \\le 100$) — the number of coins.

The second line of the input contains $n$ integers $a_1, a_2, \\dots, a_n$ ($1 \\le a_i \\le 100$) — values of coins.


-----Output-----

Print only one integer — the minimum number of pockets Polycarp needs to distribute all the coins so no two coins \
with the same value are put into the same pocket.


-----Examples-----
Input
6
1 2 4 3 3 2

Output
2

Input
1
100

Output
1
"""

_STOCK = """Say you have an array for which the ith element is the price of a given stock on day i.

If you were only permitted to complete at most one transaction (i.e., buy one and sell one share of the stock), \
design an algorithm to find the maximum profit.

Note that you cannot sell a stock before you buy one.

Example 1:

Input: [7,1,5,3,6,4]
Output: 5
Explanation: Buy on day 2 (price = 1) and sell on day 5 (price = 6), profit = 6-1 = 5.
             Not 7-1 = 6, as selling price needs to be larger than buying price.

Example 2:

Input: [7,6,4,3,1]
Output: 0
Explanation: In this case, no transaction is done, i.e. max profit = 0."""

_LETTERS = """You are given a string $s$ of lowercase Latin letters. Print the number of distinct letters in $s$.


-----Input-----

The only line contains the string $s$ ($1 \\le |s| \\le 100$).


-----Output-----

Print one integer — the number of distinct letters in $s$.


-----Examples-----
Input
abacaba

Output
3
"""

_WATERMELON = """One hot summer day Pete and his friend Billy decided to buy a watermelon. They chose the biggest \
and the ripest one, in their opinion. After that the watermelon was weighed, and the scales showed w kilos. They \
rushed home, dying of thirst, and decided to divide the berry, however they faced a hard problem.

Pete and Billy are great fans of even numbers, that's why they want to divide the watermelon in such a way that \
each of the two parts weighs even number of kilos, at the same time it is not obligatory that the parts are equal. \
The boys are extremely tired and want to start their meal as soon as possible, that's why you should help them and \
find out, if they can divide the watermelon in the way they want. For sure, each of them should get a part of \
positive weight.


-----Input-----

The first (and the only) input line contains integer number w (1 ≤ w ≤ 100) — the weight of the watermelon bought \
by the boys.


-----Output-----

Print YES, if the boys can divide the watermelon into two parts, each of them weighing even number of kilos; and NO \
in the opposite case.


-----Examples-----
Input
8

Output
YES
"""

_POWERS = """Complete the function that takes a non-negative integer `n` as input, and returns a list of all the \
powers of 2 with the exponent ranging from 0 to `n` (inclusive).

## Examples

```python
n = 0  ==> [1]        # [2^0]
n = 1  ==> [1, 2]     # [2^0, 2^1]
n = 2  ==> [1, 2, 4]  # [2^0, 2^1, 2^2]
```"""

_DIVISIBILITY = """You are given two positive integers $a$ and $b$. In one move you can increase $a$ by $1$ \
(replace $a$ with $a+1$). Your task is to find the minimum number of moves you need to do in order to make $a$ \
divisible by $b$. It is possible, that you have to make $0$ moves, as $a$ is already divisible by $b$. You have to \
answer $t$ independent test cases.


-----Input-----

The first line of the input contains one integer $t$ ($1 \\le t \\le 10^4$) — the number of test cases. Then $t$ \
test cases follow.

The only line of the test case contains two integers $a$ and $b$ ($1 \\le a, b \\le 10^9$).


-----Output-----

For each test case print the answer — the minimum number of moves you need to do in order to make $a$ divisible by \
$b$.


-----Example-----
Input
5
10 4
13 9
100 13
123 456
92 46

Output
2
5
4
333
0
"""

_VOWELS = """Return the number (count) of vowels in the given string.

We will consider `a`, `e`, `i`, `o`, `u` as vowels for this Kata (but not `y`).

The input string will only consist of lower case letters and/or spaces."""

_YEAR = """It seems like the year of 2013 came only yesterday. Do you know a curious fact? The year of 2013 is \
the first year after the old 1987 with only distinct digits.

Now you are suggested to solve the following problem: given a year number, find the minimum year number which is \
strictly larger than the given one and has only distinct digits.


-----Input-----

The single line contains integer y (1000 ≤ y ≤ 9000) — the year number.


-----Output-----

Print a single integer — the minimum year number that is strictly larger than y and all it's digits are distinct. \
It is guaranteed that the answer exists.


-----Examples-----
Input
1987

Output
2013

Input
2013

Output
2014
"""

# Split -> problems in the codeparrot/apps schema, with solutions and input_output as Python values (None: absent).
PROBLEMS: dict[str, list[dict[str, Any]]] = {
    "train": [
        {"problem_id": 0, "question": _POCKETS, "difficulty": "introductory",
         "url": "https://codeforces.com/problemset/problem/1003/A", "starter_code": "",
         "solutions": ["n = int(input())\na = list(map(int, input().split()))\nprint(max(a.count(x) for x in a))\n",
                       "from collections import Counter\ninput()\nprint(max(Counter(input().split()).values()))\n"],
         "input_output": {"inputs": ["6\n1 2 4 3 3 2\n", "1\n100\n", "5\n7 7 7 1 1\n"],
                          "outputs": ["2\n", "1\n", "3\n"]}},
        {"problem_id": 1, "question": _STOCK, "difficulty": "interview",
         "url": "https://leetcode.com/problems/best-time-to-buy-and-sell-stock/",
         "starter_code": "class Solution:\n    def maxProfit(self, prices: List[int]) -> int:\n        ",
         "solutions": ["from typing import List\n\n\nclass Solution:\n"
                       "    def maxProfit(self, prices: List[int]) -> int:\n"
                       "        best, low = 0, float('inf')\n        for p in prices:\n            low = min(low, p)\n"
                       "            best = max(best, p - low)\n        return best\n"],
         "input_output": {"fn_name": "maxProfit", "inputs": [[[7, 1, 5, 3, 6, 4]], [[7, 6, 4, 3, 1]], [[2, 4, 1]]],
                          "outputs": [5, 0, 2]}},
        {"problem_id": 2, "question": _LETTERS, "difficulty": "introductory",
         "url": "https://codeforces.com/problemset/problem/236/A", "starter_code": "", "solutions": None,
         "input_output": None},
        {"problem_id": 3, "question": _VOWELS, "difficulty": "introductory",
         "url": "https://www.codewars.com/kata/54ff3102c1bad923760001f3",
         "starter_code": "def get_count(sentence):\n\t",
         "solutions": ["def get_count(sentence):\n    return sum(1 for c in sentence if c in 'aeiou')",
                       "import re\n\ndef get_count(sentence):\n    return len(re.findall('[aeiou]', sentence))\n"],
         "input_output": {"fn_name": "get_count", "inputs": [["abracadabra"], ["o a kak ushakov lil vo kashu kakao"],
                                                             [""]],
                          "outputs": [[5], [13], [0]]}},
    ],
    "test": [
        {"problem_id": 0, "question": _WATERMELON, "difficulty": "introductory",
         "url": "https://codeforces.com/problemset/problem/4/A", "starter_code": "",
         "solutions": ["w = int(input())\nprint('YES' if w % 2 == 0 and w > 2 else 'NO')\n",
                       "w=int(input())\nif w>2 and w%2==0:\n    print(\"YES\")\nelse:\n    print(\"NO\")"],
         "input_output": {"inputs": ["8\n", "5\n", "2\n", "100\n"], "outputs": ["YES\n", "NO\n", "NO\n", "YES\n"]}},
        {"problem_id": 1, "question": _POWERS, "difficulty": "introductory",
         "url": "https://www.codewars.com/kata/57a083a57cb1f31db7000028", "starter_code": "def powers_of_two(n):\n\t",
         "solutions": ["def powers_of_two(n):\n    return [2 ** i for i in range(n + 1)]",
                       "def powers_of_two(n):\n    return [1 << x for x in range(n + 1)]"],
         "input_output": {"fn_name": "powers_of_two", "inputs": [[0], [1], [4]],
                          "outputs": [[[1]], [[1, 2]], [[1, 2, 4, 8, 16]]]}},
        {"problem_id": 2, "question": _DIVISIBILITY, "difficulty": "interview",
         "url": "https://codeforces.com/problemset/problem/1328/A", "starter_code": "",
         "solutions": ["for _ in range(int(input())):\n    a, b = map(int, input().split())\n"
                       "    print((b - a % b) % b)\n"],
         "input_output": {"inputs": ["5\n10 4\n13 9\n100 13\n123 456\n92 46\n", "1\n1 1\n"],
                          "outputs": ["2\n5\n4\n333\n0\n", "0\n"]}},
        {"problem_id": 3, "question": _YEAR, "difficulty": "interview",
         "url": "https://codeforces.com/problemset/problem/271/A", "starter_code": "",
         "solutions": ["y = int(input()) + 1\nwhile len(set(str(y))) < 4:\n    y += 1\nprint(y)\n"],
         "input_output": {"inputs": ["1987\n", "2013\n", "8999\n"], "outputs": ["2013\n", "2014\n", "9012\n"]}},
    ],
}
