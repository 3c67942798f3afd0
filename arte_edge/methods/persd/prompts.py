"""PERsD prompt templates, all in one place.

Adapted from the prompts of the reference implementation (SalesforceAIResearch/PersDistill, ``prompts/``):
- student attempt and held-out evaluation: the task's own prompt (the one the student is trained and scored on);
- teacher direct solution (StanD / InpD): ``chatgpt_instruction.txt`` ("Complete the python function to solve
  the following task"), here the task prompt itself, as in the standard method;
- teacher refinement, code mode: ``chatgpt_error_instruction.txt`` ("act like a python expert, whose objective is
  to rectify a given incorrect code ... based on the error obtained in unit testing");
- teacher refinement, nl mode: ``chatgpt_feedback_instruction.txt`` (Step 1 FEEDBACK: mistakes in the code,
  Step 2 RECTIFIED CODE); we also show the error, which the paper's feedback prompt leaves out;
- refine inference (PERsD-refine training input and multi-step inference): ``ft_error_rectify_instruction.txt``
  ("Rectify the below code for the given task based on the errors obtained in the unit tests.").
The paper's prompts give a function header the answer must start with; our tasks name the function in the task
text (MBPP's asserts, HumanEval's signature), so the header is part of TASK.
"""

from __future__ import annotations

from arte_edge.backends.base import Message
from arte_edge.evaluation.scoring import answer_messages
from arte_edge.methods.common import teacher_messages
from arte_edge.tasks.base import Item, Task

TEACHER_REFINE_SYSTEM = "You are a Python expert who fixes incorrect code so that it passes its unit tests."
TEACHER_REFINE_SYSTEM_ANSWER = "You are an expert tutor who corrects wrong step-by-step solutions."

REFINE_CODE = """Complete the python function to solve the following task.

TASK:
{task}

Now act like a python expert, whose objective is to rectify a given incorrect code for the above task, based on \
the error obtained in unit testing.

INCORRECT CODE:
```python
{attempt}
```

ERROR:
{error}

Instructions for Code Rectification:
- Based on the above errors, rectify the logic of the incorrect code and write a complete python function to \
correctly solve the task.
- If the code is significantly wrong then you can completely re-write the code, otherwise try to come up with a \
correct version that is closest to the given code.
- All output code should be inside one ```python code block, with the function name and signature the task asks \
for.

RECTIFIED CODE:"""

REFINE_NL = """Complete the python function to solve the following task.

TASK:
{task}

Now act like a python expert, whose objective is to give feedback on an incorrect code implemented for the above \
task and then also rectify it.

INCORRECT CODE:
```python
{attempt}
```

ERROR:
{error}

Give your output in two steps:

### Instruction on Step 1: Feedback Generation:
- Start with "Step 1: FEEDBACK: Mistakes in the code"
- Detect and output a short list of mistakes in the incorrect code.

### Instruction on Step 2: Code Rectification:
- Start with "Step 2: RECTIFIED CODE"
- Rectify the logic of the incorrect code and write a complete python function to correctly solve the task.
- If the given code is significantly wrong then you can completely re-write the code, otherwise try to come up \
with a correct version that is closest to the given code.
- All output code should be inside one ```python code block."""

REFINE_ANSWER = """Solve the following problem.

PROBLEM:
{task}

A student wrote this incorrect solution:

INCORRECT SOLUTION:
{attempt}

ERROR:
{error}

Find the mistake and write a corrected step-by-step solution. {feedback}End with a final line 'Answer: <answer>'."""

NL_ANSWER_FEEDBACK = "First write 'FEEDBACK:' and the mistakes in one or two sentences, then the corrected solution. "

REFINE_INFERENCE_CODE = """Rectify the below code for the given task based on the errors obtained in the unit tests.

TASK:
{task}

```python
{attempt}
```

ERROR:
{error}"""

REFINE_INFERENCE_ANSWER = """Rectify the below solution for the given problem based on the error.

PROBLEM:
{task}

SOLUTION:
{attempt}

ERROR:
{error}"""


def student_attempt_messages(task: Task, item: Item) -> list[Message]:
    """The student's first attempt: the task's own prompt (as at evaluation)."""
    return answer_messages(task, item)


def teacher_direct_messages(task: Task, item: Item) -> list[Message]:
    """The teacher solves the task from scratch (StanD, InpD): the standard method's teacher prompt."""
    return teacher_messages(task, item)


def teacher_refine_messages(task: Task, item: Item, attempt: str, error: str, mode: str) -> list[Message]:
    """The teacher rectifies the student's attempt given its execution error (code) or verdict (answer tasks).

    ``mode`` "nl" asks for natural-language feedback on the mistakes before the fixed code (paper's nl mode).
    """
    if task.kind == "code":
        template = REFINE_NL if mode == "nl" else REFINE_CODE
        user = template.format(task=task.user_prompt(item), attempt=attempt.strip(), error=error)
        return [{"role": "system", "content": TEACHER_REFINE_SYSTEM}, {"role": "user", "content": user}]
    user = REFINE_ANSWER.format(task=task.user_prompt(item), attempt=attempt.strip(), error=error,
                                feedback=NL_ANSWER_FEEDBACK if mode == "nl" else "")
    return [{"role": "system", "content": TEACHER_REFINE_SYSTEM_ANSWER}, {"role": "user", "content": user}]


def refine_inference_messages(task: Task, item: Item, attempt: str, error: str) -> list[Message]:
    """The student's own repair prompt: PERsD-refine's training input and the multi-step inference round.

    Keeps the task's system prompt, so the answer format (a ```python block, or an ``Answer:`` line) is the
    one the checker expects.
    """
    template = REFINE_INFERENCE_CODE if task.kind == "code" else REFINE_INFERENCE_ANSWER
    user = template.format(task=task.user_prompt(item), attempt=attempt.strip(), error=error)
    return [{"role": "system", "content": task.system_prompt}, {"role": "user", "content": user}]
