"""Generate the built-in default dataset for the offline LoRA fine-tuning demo.

This script writes ``tracking/data/support_tickets.csv``: a small, balanced text
classification set of customer support tickets for a (fictional) software
product. Every row is synthetic: it is assembled by this script from hand-written
templates and slot fillers (product areas, plan names, amounts, dates, devices,
browsers, error codes, polite openers and closers). Nothing is downloaded and no
existing corpus is copied.

Columns
    text   the ticket text (6 to 45 words)
    label  one of ``billing``, ``bug_report``, ``feature_request``,
           ``account_access``

Design notes
    * 300 rows per class, 1,200 in total, no duplicate texts, rows shuffled.
    * Many templates per class (more than 25 each) plus slot fillers, optional
      openers/closers, occasional typos and lower-casing, so that a model has
      to learn the intent rather than key on a single word.
    * Vocabulary deliberately overlaps between classes (a billing ticket that
      quotes an error code, a bug report about the login page, a feature
      request about invoices, ...).
    * About 3% of rows are deliberately ambiguous: they mix two intents and
      carry one of the two labels, chosen at random. A fine-tuned sentence
      encoder should therefore land somewhere around 85-95% accuracy, not 100%.
    * Generation is deterministic: a fixed seed and only the standard library,
      so the same CSV is produced on every machine and Python 3.10+.

Regenerate with::

    python tracking/data/make_default_dataset.py

Options: ``--out PATH`` writes somewhere else, ``--seed N`` changes the seed and
``--ambiguous-per-class N`` changes how many ambiguous rows each class gets. The
committed CSV is the output of the defaults.
"""

from __future__ import annotations

import argparse
import csv
import random
import re
from pathlib import Path

SEED = 20240611
ROWS_PER_CLASS = 300
AMBIGUOUS_PER_CLASS = 9  # 36 of 1,200 rows, i.e. 3%
MIN_WORDS, MAX_WORDS = 6, 45
LABELS = ("billing", "bug_report", "feature_request", "account_access")

DEFAULT_OUT = Path(__file__).resolve().parent / "support_tickets.csv"

# --------------------------------------------------------------------------- slot fillers

MONTHS = ["January", "February", "March", "April", "May", "June", "July",
          "August", "September", "October", "November", "December"]


def _date(rng: random.Random) -> str:
    style = rng.randrange(6)
    if style == 0:
        return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"
    if style == 1:
        return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if style == 2:
        day = rng.randint(1, 28)
        return f"the {day}{_ordinal_suffix(day)}"
    if style == 3:
        return rng.choice(["yesterday", "last week", "this morning", "two days ago",
                           "last Friday", "over the weekend", "last month"])
    if style == 4:
        return f"{rng.randint(1, 28)}/{rng.randint(1, 12)}"
    return f"{rng.choice(MONTHS)[:3]} {rng.randint(1, 28)}"


def _on_date(rng: random.Random) -> str:
    """A date that reads well after a verb: "on March 3", but plain "yesterday"."""
    date = _date(rng)
    return date if date[0].islower() and not date.startswith("the ") else f"on {date}"


def _ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _amount(rng: random.Random) -> str:
    value = rng.choice(["9.99", "12", "15", "19", "24.99", "29", "39", "49", "59.99",
                        "79", "99", "120", "149", "199", "240", "299", "499", "1,188"])
    return rng.choice(["$", "$", "$", "€", "£"]) + value


def _errcode(rng: random.Random) -> str:
    style = rng.randrange(7)
    if style == 0:
        return f"ERR-{rng.randint(1000, 9999)}"
    if style == 1:
        return f"error {rng.choice([400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504])}"
    if style == 2:
        return rng.choice(["E_TIMEOUT", "E_SYNC_CONFLICT", "E_QUOTA", "E_AUTH_EXPIRED",
                           "E_UNKNOWN", "E_RATE_LIMIT", "E_PAYMENT_DECLINED"])
    if style == 3:
        return f"code 0x{rng.randint(0x10000, 0xFFFFF):X}"
    if style == 4:
        return f"\"Something went wrong ({rng.randint(100, 999)})\""
    if style == 5:
        return f"error {rng.randint(1000, 9999)}"
    return rng.choice(["502 Bad Gateway", "a 500 Internal Server Error",
                       "\"Request failed\"", "\"Unexpected token\"", "a timeout error"])


def _version(rng: random.Random) -> str:
    return f"{rng.choice(['v', 'version ', ''])}{rng.randint(3, 5)}.{rng.randint(0, 12)}.{rng.randint(0, 9)}"


def _invoice(rng: random.Random) -> str:
    return rng.choice(["INV-", "#", "invoice #", "INV"]) + str(rng.randint(10000, 99999))


def _number(rng: random.Random) -> str:
    return str(rng.choice([2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 40, 50]))


SLOTS: dict[str, list[str]] = {
    "area": ["dashboard", "reports page", "analytics tab", "CSV export", "calendar view",
             "project board", "file uploader", "search bar", "notification settings",
             "team workspace", "admin console", "API", "Slack integration", "mobile app",
             "desktop app", "timeline view", "comments section", "task list",
             "sync feature", "kanban board", "time tracker", "document editor",
             "settings page", "import wizard", "PDF export", "chat widget"],
    "plan": ["Starter", "Basic", "Pro", "Team", "Business", "Enterprise", "Premium",
             "Plus", "Growth"],
    "device": ["iPhone 13", "iPhone 15", "Pixel 7", "Samsung Galaxy S22", "iPad Air",
               "MacBook Air", "Windows 11 laptop", "Chromebook", "Surface Pro",
               "OnePlus 11", "Android tablet", "Linux desktop"],
    "os": ["iOS 17", "Android 14", "Windows 11", "Windows 10", "macOS Sonoma",
           "macOS Ventura", "Ubuntu 22.04", "ChromeOS"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge", "Brave", "Opera", "Chrome on Android",
                "Safari on iOS"],
    "card": ["Visa", "Mastercard", "Amex", "PayPal", "debit card", "corporate card",
             "company credit card"],
    "feature": ["dark mode", "bulk editing", "two-way calendar sync", "custom fields",
                "keyboard shortcuts", "Gantt charts", "offline mode", "recurring tasks",
                "webhooks", "an audit log", "saved filters", "emoji reactions",
                "time tracking", "a Zapier integration", "subtasks", "read receipts",
                "a Linux desktop client", "custom report templates", "markdown support",
                "tags on files", "an undo button", "scheduled exports",
                "guest access for clients", "a weekly summary email", "multiple assignees",
                "color coded labels", "a Teams integration", "drag and drop reordering"],
    "action": ["save a draft", "upload a PDF", "export to CSV", "filter by date",
               "drag a card to another column", "add a comment", "rename a project",
               "attach an image", "switch workspaces", "print a report", "sort the table",
               "duplicate a task", "archive old projects", "edit a recurring event",
               "paste from Excel", "share a link", "resize a column", "search for a file",
               "change the due date", "merge two records"],
    "symptom": ["the page freezes", "nothing happens", "I get a blank white screen",
                "the app crashes", "the spinner never stops", "everything gets duplicated",
                "the numbers come out wrong", "the layout breaks completely",
                "it throws {errcode}", "the changes are lost after a refresh",
                "the button stays greyed out", "it shows {errcode}",
                "the whole tab becomes unresponsive", "half the rows disappear",
                "the text overlaps the sidebar", "it just reloads the page"],
    "person": ["my manager", "our accountant", "a new hire", "my colleague", "our admin",
               "a contractor", "our finance team", "my boss", "a teammate", "our CEO"],
    "name": ["Priya", "Tom", "Ana", "Marcus", "Yuki", "Fatima", "Lars", "Chen", "Olga",
             "Diego", "Sam", "Aisha", "Jonas", "Mei", "Kwame", "Elena", "Ravi", "Noor"],
    "company": ["Acme Studio", "Bluefin Labs", "Maple Street Bakery", "Riverside Clinic",
                "Lakeview High School", "Orbit Analytics", "Greenleaf Foundation",
                "Pine & Co", "Harbor Logistics", "Sunrise Dental"],
    "login_method": ["Google sign-in", "SSO", "Microsoft login", "my email and password",
                     "the magic link", "Apple sign-in", "Okta"],
    "period": ["monthly", "annual", "yearly", "quarterly"],
    "period_noun": ["week", "month", "quarter"],
    "timeframe": ["for two days", "since this morning", "since the last update",
                  "for about a week", "since yesterday", "on and off all week",
                  "since {date}", "after the update {on_date}"],
}

GENERATED = {
    "date": _date,
    "on_date": _on_date,
    "amount": _amount,
    "errcode": _errcode,
    "version": _version,
    "invoice": _invoice,
    "n": _number,
    "year": lambda rng: str(rng.randint(2015, 2023)),
}

OPENERS = ["Hi,", "Hello,", "Hi there,", "Hello team,", "Hey,", "Hi support,",
           "Good morning,", "Dear support team,", "Hey folks,", "Hi all,", "Hello support,",
           "Hi, {name} here.", "Quick question:", "Urgent:", "Hi again,", "Good afternoon,",
           "Sorry to bother you,"]

CLOSERS = ["Thanks!", "Thanks in advance.", "Any help appreciated.", "Please advise.",
           "Cheers.", "Regards, {name}", "Thank you.", "Let me know if you need more info.",
           "Thanks, {name}", "Appreciate it.", "Please help.", "Looking forward to your reply.",
           "Thx", "Best, {name}", "Hope you can help.", "This is pretty urgent for us.",
           "Thanks for the great product otherwise."]

# --------------------------------------------------------------------------- templates

TEMPLATES: dict[str, list[str]] = {
    "billing": [
        "I was billed the wrong total: the line items add up to {amount} but my {card} was charged {amount}.",
        "The upgrade page showed {errcode} but I was charged {amount} anyway. Please refund it or activate the plan.",
        "We were charged for a {plan} seat for {person} who never managed to log in even once.",
        "Please stop billing the old workspace, we moved everything to a new account {on_date}.",
        "The app crashed during checkout and now I see two charges of {amount} on my {card}.",
        "I was charged twice for my {plan} subscription {on_date}. Can you refund the duplicate payment of {amount}?",
        "Why was I billed {amount} this month? My plan is {plan} and it used to be {amount}.",
        "Please cancel my subscription and stop charging my {card}.",
        "Refund request for {invoice}, charged twice.",
        "Why did my bill go up this month?",
        "Need a copy of {invoice} please.",
        "My {card} was declined with {errcode} when I tried to renew. I updated the card but the payment still fails.",
        "Can I get an invoice with our company name and VAT number on it? {invoice} only shows my personal name.",
        "We downgraded to {plan} {on_date} but were still charged the old price.",
        "I cancelled {on_date} and you still took {amount} from my account. I want a refund.",
        "How does proration work if I add {n} seats in the middle of the billing cycle?",
        "The discount code from your newsletter was not applied at checkout, I paid full price of {amount}.",
        "I never received a receipt for the {amount} payment made {on_date}.",
        "Can we switch from {period} to {period} billing and keep the same discount?",
        "Our finance team needs all invoices sent to a different billing email address. How do we change it?",
        "My free trial ended and I got charged {amount} without any reminder email. Please reverse this.",
        "Is there a nonprofit or education discount for the {plan} plan?",
        "Invoice {invoice} lists more seats than we have, there are only {n} active users on our team.",
        "The payment page shows {errcode} every time I enter my {card} details, so I can't pay my overdue balance.",
        "Can we pay for the {period} plan with {card}? Our {card} keeps getting rejected.",
        "You charged me in euros but my account is set to US dollars, the amount was {amount}.",
        "How much would it cost to move {company} from {plan} to {plan} with {n} users?",
        "I see a pending charge of {amount} from you but I don't recognise it. What is it for?",
        "Please remove the sales tax from our invoices, we are tax exempt and sent the certificate {on_date}.",
        "My subscription renewed automatically at {amount} even though I turned off auto renew.",
        "Where can I download past invoices? {person} needs them for the annual audit.",
        "The price on your website for {plan} is lower than what I am paying. Can you match it?",
        "I upgraded to {plan} by mistake, can I get my money back and go back to {plan}?",
        "Our account was suspended for non payment but the bank says the {amount} transfer went through {on_date}.",
        "Can you split the bill so that {n} seats go on one invoice and the rest on another cost center?",
        "I paid {invoice} twice by accident, once by {card} and once by {card}.",
        "what happens to my billing if i pause the account for {n} months",
        "Need a refund for the unused part of the {period} plan, we closed {company}.",
        "Billing question: does the {plan} price include all add-ons or are those charged separately?",
        "The charge on my statement says {amount} but the invoice in the {area} says {amount}. Which one is right?",
        "Your system keeps retrying a failed payment and my bank charged me overdraft fees. Please stop the retries.",
    ],
    "bug_report": [
        "The invoice PDF shows the wrong total, the line items add up to {amount} but the total line says {amount}.",
        "The Remember me checkbox on the login page is ignored, it is unticked every time I come back.",
        "The billing page in the {area} shows my plan as {plan} even though the invoice says {plan}. "
        "The charge itself is correct.",
        "The invite link we send to new users opens a blank page in {browser}. Other links work.",
        "The seat counter in the admin console is off by one after removing a user.",
        "When I try to {action} in the {area}, {symptom}.",
        "The {area} has been broken {timeframe}: {symptom} whenever I {action}.",
        "Every time I {action} on {browser}, {symptom}. Works fine in {browser}.",
        "The {area} crashes on my {device} running {os} right after opening it.",
        "App crashes on startup on my {device}.",
        "{area} not loading at all {timeframe}.",
        "Export button does nothing in {browser}.",
        "Since updating to {version}, {symptom} when I {action}.",
        "Steps to reproduce: open the {area}, {action}, then refresh. Result: {symptom}.",
        "Found a bug: the totals on the reports page don't match the numbers in the {area}.",
        "Notifications stopped arriving on my {device} {timeframe} even though they are enabled.",
        "The login page layout is broken on {browser}, the password field overlaps the logo. "
        "I can still sign in though.",
        "Exporting invoices from the {area} produces a corrupted CSV file with missing columns.",
        "The {area} is extremely slow today, it takes over a minute to load and sometimes shows {errcode}.",
        "Dates in the {area} are shown one day off, looks like a timezone bug.",
        "I keep getting {errcode} from the API when I {action}, it worked fine {on_date}.",
        "Images attached to comments are not displayed, just a broken icon in {browser}.",
        "The sync between the {area} and the {area} duplicates every item.",
        "The mobile app logs me out every few minutes on {os}, and all my unsaved edits are lost.",
        "bug: {symptom} when i {action} on the {area}",
        "Dark mode makes the text in the {area} unreadable, black text on a dark grey background.",
        "Search returns no results for words I can see right there in the {area}.",
        "Keyboard shortcuts stopped working in the {area} after {version}.",
        "The {area} shows the wrong user as the owner of my tasks.",
        "Uploading files bigger than {n} MB fails silently in the {area}, no error message at all.",
        "On my {device} the buttons at the bottom of the {area} are cut off and can't be tapped.",
        "The desktop app uses almost all of my CPU on {os} even when it is idle.",
        "The Slack integration posts every update {n} times in our channel.",
        "Something is broken with the checkout page: {symptom} after I click the upgrade button. I was not charged.",
        "Drag and drop in the {area} puts the card in the wrong column about half the time.",
        "Recurring events created in the {area} disappear after the first occurrence.",
        "The {area} freezes on {browser} when I have more than {n} tabs of it open.",
        "After the update {on_date} the {area} shows {errcode} for everyone on our team.",
        "The unsubscribe link in your emails leads to a 404 page.",
        "Charts in the analytics tab render empty for the last {n} days although the raw data is there.",
        "The {area} ignores my language setting and shows everything in German.",
    ],
    "feature_request": [
        "Please add a way to reset 2FA myself without contacting support.",
        "Could invoices include our purchase order number? Our finance team needs it for approval.",
        "It would be nice if the login page offered {login_method} in addition to email and password.",
        "Can admins get an alert when a payment fails, before the workspace gets suspended?",
        "Please show a clearer error message when an upload fails instead of just {errcode}.",
        "It would be great if the {area} supported {feature}.",
        "Please add {feature}, we would use it every day.",
        "Please add {feature} to the mobile app.",
        "Would love {feature}, any ETA?",
        "Dark mode please, my eyes hurt at night.",
        "Any plans to add {feature} to the {area}? {company} really needs it.",
        "Feature request: {feature} in the {area}.",
        "Could you add an option to export invoices as CSV instead of only PDF? Our accountant would love it.",
        "We would happily pay more for the {plan} plan if it included {feature}.",
        "Is {feature} on the roadmap? I could not find it anywhere.",
        "Suggestion: let us {action} directly from the {area} instead of opening a separate page.",
        "Our team would really benefit from {feature}. Right now we work around it with spreadsheets.",
        "Can you make the {area} remember my last used filters? Setting them again every time is tedious.",
        "I'd love to see {feature} and {feature} in a future release.",
        "Would you consider supporting {login_method} for signing in? Our IT department requires it.",
        "The error messages in the {area} could be more helpful, something like a hint on how to fix the problem.",
        "Please allow more than {n} users on the {plan} plan, we are growing and don't need Enterprise yet.",
        "Not a bug, just a wish: {feature} for the {area}.",
        "An integration with our accounting software would save us hours every month.",
        "It would help a lot if admins could see a history of who changed what in the {area}.",
        "Please make it possible to {action} in bulk, doing it one by one takes forever.",
        "Can the mobile app get {feature}? The desktop version already has it.",
        "i really wish the {area} had {feature}",
        "Add a way to pay for several workspaces with a single invoice, that would make billing much simpler for us.",
        "We'd like to set different permissions per project in the {area}, for example read only for {person}.",
        "Idea: a setting to get a daily digest instead of one notification per change.",
        "Please bring {feature} to the {browser} extension too.",
        "Could the {area} show a preview before I {action}? It would avoid a lot of mistakes.",
        "Requesting {feature}. Competitors already offer it and {person} keeps asking for it.",
        "A public API endpoint for the {area} would let us build our own reports.",
        "Would love an option to stay signed in for longer on trusted devices like my {device}.",
        "Please let us customise the columns shown in the {area}.",
        "Can you add templates for common projects so we don't start from scratch every time?",
        "Voting for {feature}! Is there a public roadmap where I can follow progress?",
        "It would be nice to choose the start day of the week in the {area}, we start on Sunday.",
        "How about a usage report by email for admins every {period_noun}? We'd find that really useful.",
    ],
    "account_access": [
        "Please reset 2FA for me, I can't sign in without my old {device}.",
        "I can't open the billing section anymore, it says I don't have permission since my role changed.",
        "After paying the overdue invoice our workspace is still locked and nobody can sign in.",
        "The login page shows {errcode} after I enter my password, on every browser I tried.",
        "I need to add a second admin so {person} can sign in and manage invoices while I'm away.",
        "I can't log in to my account, it says my password is incorrect even after resetting it.",
        "Can't log in, password reset not working.",
        "Locked out of my account, please help.",
        "2FA code not arriving on my {device}.",
        "The password reset email never arrives. I checked spam and waited {timeframe}.",
        "I lost my phone with the authenticator app and can't get past two-factor authentication.",
        "My account is locked after too many login attempts. How long until I can try again?",
        "I get {errcode} on the login page when I sign in with {login_method}.",
        "How do I change the email address I use to sign in? I am leaving my old job.",
        "Someone logged into my account from another country {on_date}. Please secure it and sign them out.",
        "The verification code sent by SMS never shows up on my {device}.",
        "I was invited to {company}'s workspace but the invite link says it has expired.",
        "{person} left the company and was the only admin. How do we get admin rights back?",
        "{login_method} stopped working for our whole team {timeframe}, nobody can sign in.",
        "My account says it has been deactivated but I never asked for that.",
        "I keep getting kicked back to the login screen right after entering my password on {browser}.",
        "Can you transfer ownership of the workspace from my personal account to {person}?",
        "I signed up with Google and now I want a normal password, but there is no option to set one.",
        "The magic link in the sign-in email opens the app but says the link is invalid.",
        "I have two accounts with different emails, how can I merge them so I can access everything from one login?",
        "Our admin removed me by mistake, please restore my access to the {area}.",
        "can't sign in on my {device}, it just says {errcode}",
        "My username was changed and I don't know which one to use to log in now.",
        "Please reset two-factor authentication on my account, I got a new {device}.",
        "I forgot which email I registered with. Can you help me recover the account?",
        "The backup codes for 2FA don't work, each one says invalid code.",
        "I can log in on the website but the {device} app says my credentials are wrong.",
        "Our SSO certificate was renewed and now everyone gets {errcode} when signing in.",
        "My session expires every few minutes and I have to log in again, is there a setting for this?",
        "Please delete the account linked to this email, I no longer have access to the original login.",
        "I received a password reset email I did not request. Is my account compromised?",
        "{person} cannot access the {area}, it says they don't have permission even though they are an editor.",
        "The captcha on the sign in page never accepts my answer, so I am stuck.",
        "How do I remove an old phone number from my account? Codes still go there and I can't log in.",
        "Locked out after changing my password {on_date}, the new one doesn't work and the old one doesn't either.",
        "I need access to my late father's account to export his files. What is the process?",
    ],
}

# Optional extra sentences that make tickets longer and more varied. Some are
# class specific, some are shared by two classes or by all of them.
EXTRAS: dict[str, list[str]] = {
    "billing": [
        "We are on the {period} plan with {n} seats.",
        "This is the second time this has happened.",
        "Please send a corrected invoice.",
        "Our books close at the end of the month, so this is time sensitive.",
        "I have the bank statement if you need proof.",
        "Please look into it as soon as possible.",
        "Our finance department is asking me about it every day.",
        "We have been paying customers for {n} years.",
    ],
    "bug_report": [
        "I already cleared the cache and tried an incognito window.",
        "I'm using {browser} on {os}.",
        "Screenshot attached.",
        "It happens for {person} too.",
        "Restarting the app doesn't help.",
        "It worked fine before {version}.",
        "This is blocking our release this week.",
        "The console shows {errcode}.",
        "I can reproduce it every single time.",
    ],
    "feature_request": [
        "We are on {plan} with {n} users.",
        "Happy to beta test it.",
        "Right now we use a spreadsheet as a workaround.",
        "Several people on my team asked for this.",
        "Otherwise we love the product.",
        "It would make the {area} so much more useful.",
        "This is the main thing keeping us from recommending you to other teams.",
    ],
    "account_access": [
        "I already tried the forgot password link {n} times.",
        "I'm on {browser} on {os}.",
        "I need to get in before a client meeting today.",
        "I still receive your newsletters at that address, so the account exists.",
        "My username is {name}{n}.",
        "All my project files are in there, I really need them back.",
        "I tried from my {device} as well, same result.",
    ],
    "any": [
        "We have been customers since {year}.",
        "This is blocking {person}.",
        "Our workspace is called {company}.",
        "I contacted you about this {on_date} but got no answer.",
        "Happy to jump on a call if that helps.",
    ],
}

# Each entry mixes two intents; the row gets one of the listed labels.
AMBIGUOUS: list[tuple[str, tuple[str, str]]] = [
    ("I paid for {plan} {on_date} but I still can't log in to use any of the paid features.",
     ("billing", "account_access")),
    ("The invoice page shows {errcode} so I can't download my receipt for {invoice}.",
     ("billing", "bug_report")),
    ("Is there a way to make the {area} remember my login? I have to sign in every morning.",
     ("feature_request", "account_access")),
    ("The {area} won't let me export invoices. Is that a bug or just not supported yet?",
     ("bug_report", "feature_request")),
    ("{person} can't see the {area} after I moved them to the {plan} plan.",
     ("account_access", "billing")),
    ("Two-factor codes stopped working for me after the {version} update.",
     ("account_access", "bug_report")),
    ("Please let us pay annually, the monthly charge keeps failing with {errcode}.",
     ("feature_request", "billing")),
    ("The password reset page is broken on {browser}, the submit button does nothing.",
     ("bug_report", "account_access")),
    ("We need SSO, but it is only on Enterprise. Could you offer it on {plan} too?",
     ("feature_request", "billing")),
    ("I am being billed for {n} seats for people who left, the {area} should remove them automatically.",
     ("billing", "feature_request")),
    ("Got logged out and now the app says my subscription has expired, but I paid {amount} {on_date}.",
     ("account_access", "billing")),
    ("The {area} says my trial is over even though I upgraded to {plan}, looks like something is broken.",
     ("bug_report", "billing")),
    ("The {area} should warn before logging me out, I lost my work twice {timeframe}.",
     ("feature_request", "bug_report")),
    ("Since switching to {login_method} I can't find the billing section anymore.",
     ("account_access", "billing")),
    ("The mobile app has no way to update my payment card, can you add that or is it hidden somewhere?",
     ("feature_request", "billing")),
    ("After the {version} update my teammates can't open shared projects in the {area}.",
     ("bug_report", "account_access")),
    ("Why does the invite email for new seats go to spam every time?",
     ("bug_report", "account_access")),
    ("The {area} keeps asking me to log in again whenever I {action}.",
     ("bug_report", "account_access")),
]

# --------------------------------------------------------------------------- generation

_SLOT_RE = re.compile(r"\{(\w+)\}")


def fill(template: str, rng: random.Random, depth: int = 0) -> str:
    """Replace every ``{slot}`` with a random filler (recursively).

    A slot that appears twice in one template gets two different fillers, so
    "from {plan} to {plan}" never becomes "from Pro to Pro".
    """
    used: dict[str, set[str]] = {}

    def repl(m: re.Match) -> str:
        key = m.group(1)
        taken = used.setdefault(key, set())
        for _ in range(20):
            value = GENERATED[key](rng) if key in GENERATED else rng.choice(SLOTS[key])
            if value not in taken:
                break
        taken.add(value)
        return value
    out = _SLOT_RE.sub(repl, template)
    if depth < 3 and _SLOT_RE.search(out):
        out = fill(out, rng, depth + 1)
    return out


def typo(text: str, rng: random.Random) -> str:
    """Introduce one realistic typo into a word of 4+ letters."""
    words = text.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4]
    if not candidates:
        return text
    i = rng.choice(candidates)
    w = words[i]
    kind = rng.randrange(3)
    j = rng.randrange(1, len(w) - 2)
    if kind == 0:  # swap two neighbouring letters
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif kind == 1:  # drop a letter
        w = w[:j] + w[j + 1:]
    else:  # double a letter
        w = w[:j] + w[j] + w[j:]
    words[i] = w
    return " ".join(words)


# First words that keep their capital after an opener such as "Hi,".
_KEEP_CAPITAL = {"I", "I'm", "I'd", "I've", "I'll"} | {
    v.split()[0] for key in ("plan", "device", "os", "browser", "card", "name", "login_method")
    for v in SLOTS[key]} | {"API", "CSV", "PDF", "SSO", "SMS", "2FA"}


def style(body: str, label: str | None, rng: random.Random) -> str:
    """Wrap a ticket body with optional extras, opener/closer and casual noise."""
    parts = []
    if rng.random() < 0.35:
        opener = fill(rng.choice(OPENERS), rng)
        first = body.split()[0].strip(",.:!?")
        if opener.endswith(",") and first not in _KEEP_CAPITAL and rng.random() < 0.6:
            body = body[0].lower() + body[1:]
        parts.append(opener)
    parts.append(body)
    r = rng.random()
    n_extra = 2 if r < 0.12 else 1 if r < 0.45 else 0
    pool = EXTRAS["any"] + (EXTRAS[label] * 3 if label else [])
    extras: list[str] = []
    while len(extras) < n_extra:
        extra = rng.choice(pool)
        if extra not in extras:
            extras.append(extra)
    parts.extend(fill(extra, rng) for extra in extras)
    if rng.random() < 0.35:
        parts.append(fill(rng.choice(CLOSERS), rng))
    text = " ".join(parts)
    if rng.random() < 0.07:
        text = typo(text, rng)
    if rng.random() < 0.02:
        text = typo(text, rng)
    r = rng.random()
    if r < 0.08:
        text = text.lower()
    elif r < 0.12:
        text = text.rstrip(".!")
    return re.sub(r"\s+", " ", text).strip()


def _ok(text: str, seen: set[str]) -> bool:
    n = len(text.split())
    return MIN_WORDS <= n <= MAX_WORDS and text.lower() not in seen


def generate(seed: int = SEED,
             ambiguous_per_class: int = AMBIGUOUS_PER_CLASS) -> list[tuple[str, str]]:
    """Return the shuffled ``(text, label)`` rows; same seed, same rows."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []

    # Ambiguous rows first: for each class, rows whose pair includes that class.
    for label in LABELS:
        pool = [t for t, pair in AMBIGUOUS if label in pair]
        made = 0
        while made < ambiguous_per_class:
            text = style(fill(rng.choice(pool), rng), None, rng)
            if _ok(text, seen):
                seen.add(text.lower())
                rows.append((text, label))
                made += 1

    # Regular rows: cycle through the templates so every one is used evenly.
    for label in LABELS:
        templates = TEMPLATES[label]
        need = ROWS_PER_CLASS - ambiguous_per_class
        order: list[str] = []
        made = 0
        attempts = 0
        while made < need:
            if not order:
                order = templates[:]
                rng.shuffle(order)
            template = order.pop()
            attempts += 1
            if attempts > need * 50:
                raise RuntimeError(f"could not make {need} unique rows for {label}")
            text = style(fill(template, rng), label, rng)
            if _ok(text, seen):
                seen.add(text.lower())
                rows.append((text, label))
                made += 1

    rng.shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"output CSV path (default: {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=SEED, help="random seed")
    parser.add_argument("--ambiguous-per-class", type=int, default=AMBIGUOUS_PER_CLASS,
                        help="deliberately ambiguous rows per class (default: %(default)s, "
                             "i.e. 3%%); raise it to make the task harder")
    args = parser.parse_args()
    if not 0 <= args.ambiguous_per_class <= ROWS_PER_CLASS:
        parser.error(f"--ambiguous-per-class must be between 0 and {ROWS_PER_CLASS}")

    rows = generate(args.seed, args.ambiguous_per_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()
